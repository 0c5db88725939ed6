"""Configuration: lookup order, defaults, relative paths, and errors that name the key (docs/design.md#configuration)."""

from pathlib import Path

import pytest

from pipeline import config as config_module
from pipeline import store
from pipeline.store import sqlite
from pipeline.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path, text, name="pipeline.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_keep_everything_under_var(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PIPELINE_CONFIG", raising=False)
    cfg = config_module.load()
    assert cfg.source is None
    assert cfg.paths.hot_folder == tmp_path / "var/hot"
    assert cfg.paths.store == tmp_path / "var/store"
    assert cfg.paths.failed == tmp_path / "var/failed"
    assert cfg.paths.error_log == tmp_path / "var/log/errors"
    assert cfg.paths.database == tmp_path / "var/pipeline.db"
    assert cfg.detect.min_file_age == 1.0 and cfg.detect.scan_interval == 60
    assert cfg.detect.observer == "inotify"
    r = cfg.router
    assert (r.batch_size, r.lease, r.max_file_bytes, r.conflict, r.max_attempts, r.create_folders) == \
        (100, 60, 52428800, "replace", 0, True)
    assert (r.file_mode, r.dir_mode) == (0o664, 0o775)
    assert cfg.api.endpoint == "" and cfg.api.max_attempts == 5 and cfg.api.verify_tls is True
    assert cfg.api.max_retry_after == 600
    assert cfg.report.timezone == "Europe/London" and cfg.alerts.stuck_after == 600
    assert cfg.routes == ()


def test_lookup_order_flag_then_env_then_local_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    local = write(tmp_path, '[paths]\nhot_folder = "local"\n')
    env = write(tmp_path, '[paths]\nhot_folder = "env"\n', "env.toml")
    flag = write(tmp_path, '[paths]\nhot_folder = "flag"\n', "flag.toml")
    monkeypatch.setenv("PIPELINE_CONFIG", str(env))
    assert config_module.load(flag).paths.hot_folder.name == "flag"
    assert config_module.load().paths.hot_folder.name == "env"
    monkeypatch.delenv("PIPELINE_CONFIG")
    assert config_module.load().paths.hot_folder.name == "local"
    local.unlink()
    assert config_module.load().paths.hot_folder == tmp_path / "var/hot"


def test_relative_paths_resolve_against_the_config_files_folder(tmp_path, monkeypatch):
    sub = tmp_path / "etc"
    sub.mkdir()
    path = write(sub, '[paths]\nstore = "../archive"\n\n[[route]]\nname = "A"\nto = "out/a"\n')
    monkeypatch.chdir(tmp_path.parent)
    cfg = config_module.load(path)
    assert cfg.paths.store == tmp_path / "archive"
    assert cfg.routes[0].to == sub / "out/a"


@pytest.mark.parametrize("text, message", [
    ('[paths]\nhot_foldr = "x"\n', "[paths] hot_foldr: unknown key"),
    ('[pathz]\nx = 1\n', "[pathz]: unknown section"),
    ('[router]\nbatch_size = 0\n', "[router] batch_size: expected a whole number of at least 1, got 0"),
    ('[router]\nbatch_size = "100"\n', "[router] batch_size"),
    ('[router]\nthreads = 0\n', "[router] threads: expected a whole number of at least 1, got 0"),
    ('[router]\norder_by = "JobSpecification..JobNumber"\n',
     "[router] order_by: 'JobSpecification..JobNumber' is not a dotted path such as "
     "JobSpecification.JobDetails.JobNumber"),
    ('[router]\norder_by = 5\n', "[router] order_by: expected a string (a dotted path), got an integer"),
    ('[router]\norder_by = "JobSpecification.JobDetails.JobNumber"\n', None),
    ('[router]\nconflict = "overwrite"\n', "[router] conflict: expected one of replace, keep, fail"),
    ('[router]\nfile_mode = "777"\n', None),    # a valid octal mode: accepted
    ('[router]\nfile_mode = "0999"\n', "[router] file_mode: expected an octal mode"),
    ('[router]\ncreate_folders = "yes"\n', "[router] create_folders: expected true or false"),
    ('[detect]\nobserver = "fsevents"\n', "[detect] observer: expected one of inotify, polling"),
    ('[detect]\nmin_file_age = -1\n', "[detect] min_file_age"),
    ('[api]\nendpoint = "ftp://example"\n', "[api] endpoint: expected an http:// or https:// address"),
    ('[api]\nheaders = { X = 1 }\n', "[api] headers"),
    ('[api]\nmax_retry_after = 0\n', "[api] max_retry_after: expected a finite number above 0, got 0"),
    ('[api]\nmax_retry_after = -60\n', "[api] max_retry_after: expected a finite number above 0, got -60"),
    ('[api]\nmax_retry_after = "600"\n', "[api] max_retry_after: expected a finite number above 0, got '600'"),
    ('[api]\nmax_retry_after = true\n', "[api] max_retry_after: expected a finite number above 0, got True"),
    ('[api]\nmax_retry_after = 0.5\n', None),
    ('[report]\ntime = "25:00"\n', "[report] time"),
    ('[report]\ntimezone = "Mars/Olympus"\n', "[report] timezone: unknown time zone"),
    ('[report]\nrecipients = "ops@example.com"\n', "[report] recipients: expected a list"),
    ('[smtp]\nport = 70000\n', "[smtp] port"),
    ('[[route]]\nname = "A"\n', "[[route]] #1 to: required"),
    ('[[route]]\nname = "A"\nto = "x"\nclient = ["RANK"]\n', "[[route]] #1 client: unknown key"),
    ('[[route]]\nname = "A"\nto = "x"\nclients = []\n', "[[route]] #1 clients: an empty list matches nothing"),
    ('[[route]]\nname = "A"\nto = "x"\nclients = "RANK"\n', "[[route]] #1 clients: expected a list"),
    # A rule's name is recorded with each copy, and in log lines: text every engine stores, one line.
    ('[[route]]\nname = "A\\u0000"\nto = "x"\n', "[[route]] #1 name: contains the control character U+0000"),
    ('[[route]]\nname = "A\\nB"\nto = "x"\n', "[[route]] #1 name: contains the control character U+000A"),
    ('[[route]]\nname = "A"\nto = "x\\u0000y"\n', "[[route]] #1 to: a path cannot hold a NUL character (U+0000)"),
    ('[paths]\nstore = "var/hot/archive"\n', "[paths] store"),
    ('[paths]\nfailed = "var/hot"\n', "[paths] failed"),
    ('[[route]]\nname = "A"\nto = "var/hot/RANK"\n', "lies inside the hot folder"),
    ('[paths\n', "not valid TOML"),
])
def test_bad_values_are_rejected_naming_the_key(tmp_path, text, message):
    path = write(tmp_path, text)
    if message is None:
        config_module.load(path)
        return
    with pytest.raises(ConfigError) as e:
        config_module.load(path)
    assert message in str(e.value)
    assert str(path) in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("text, message", [
    ('[api]\nheaders = { X-Token = "abc-secret\\r\\nX-Evil: 1" }\n',
     "[api] headers: the value of X-Token contains the control character U+000D (the value is not shown)"),
    ('[api]\nheaders = { X-Token = "abc-secret\\nX-Evil: 1" }\n', "the value of X-Token contains the control character U+000A"),
    ('[api]\nheaders = { X-Token = "abc-secret\\u0085" }\n', "the value of X-Token contains the control character U+0085"),
    ('[api]\nheaders = { "X-Token\\r\\nX-Evil" = "1" }\n', "[api] headers: 'X-Token\\r\\nX-Evil' is not a header name"),
    ('[api]\nheaders = { "X Token" = "1" }\n', "[api] headers: 'X Token' is not a header name"),
    ('[api]\nheaders = { "" = "1" }\n', "[api] headers: '' is not a header name"),
    ('[report]\nsender = "pipeline@example.com\\r\\nBcc: all@example.com"\n',
     "[report] sender: contains the control character U+000D"),
    ('[report]\nrecipients = ["ops@example.com", "b@example.com\\nBcc: x@example.com"]\n',
     "[report] recipients: contains the control character U+000A"),
    ('[alerts]\nrecipients = ["oncall@example.com\\r"]\n', "[alerts] recipients: contains the control character U+000D"),
    ('[alerts]\nrecipients = ["oncall@example.com\\u001b"]\n', "[alerts] recipients: contains the control character U+001B"),
    ('[smtp]\nusername = "pipeline\\nMAIL FROM:<x>"\n', "[smtp] username: contains the control character U+000A"),
])
def test_control_characters_in_headers_and_mail_addresses_are_refused(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        config_module.load(path)
    assert message in str(e.value)
    assert "abc-secret" not in str(e.value)             # a header value may be a secret: never shown
    assert "\n" not in str(e.value) and "\r" not in str(e.value)


def test_ordinary_headers_and_addresses_are_accepted(tmp_path):
    cfg = config_module.load(write(tmp_path, '[api]\nheaders = { Authorization = "Bearer a b", X-Api_Key = "env:K" }\n'
                                             '[report]\nsender = "Pipeline <pipeline@example.com>"\n'
                                             'recipients = ["ops@example.com", "Zoë <zoe@example.com>"]\n'))
    assert cfg.api.headers == {"Authorization": "Bearer a b", "X-Api_Key": "env:K"}
    assert cfg.report.recipients == ("ops@example.com", "Zoë <zoe@example.com>")


@pytest.mark.parametrize("section, key, value", [
    ("router", "lease", "nan"),
    ("router", "lease", "inf"),
    ("router", "poll_interval", "-nan"),
    ("detect", "min_file_age", "inf"),
    ("detect", "scan_interval", "+inf"),
    ("detect", "scan_timeout", "nan"),
    ("api", "timeout", "inf"),
    ("api", "backoff_cap", "nan"),
    ("api", "max_retry_after", "inf"),
    ("api", "max_retry_after", "nan"),
    ("smtp", "timeout", "inf"),
    ("alerts", "min_interval", "nan"),
    ("alerts", "stuck_after", "inf"),
    ("detect", "min_file_age", "-inf"),
])
def test_nan_and_infinity_are_refused_for_every_number_key(tmp_path, section, key, value):
    path = write(tmp_path, f"[{section}]\n{key} = {value}\n")
    with pytest.raises(ConfigError) as e:
        config_module.load(path)
    assert f"[{section}] {key}: expected a finite number" in str(e.value)
    assert value.lstrip("+-") in str(e.value)


def test_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="no such configuration file"):
        config_module.load(tmp_path / "nope.toml")


def test_example_config_carries_the_seeds_routing_matrix():
    cfg = config_module.load(ROOT / "pipeline.example.toml")
    by_name = {}
    for route in cfg.routes:
        by_name.setdefault(route.name, []).append(route)
    matrix = {"Monday Rank", "Monday RB", "BISSELL-WRIKE/IN", "LOREAL/IN", "Celtra"}
    assert set(by_name) == matrix | {"Proofs by studio", "Rush banners", "Order exports", "RIP-1"}
    assert all(r.template is None and not r.match and r.files is None for n in matrix for r in by_name[n])
    proofs, rush, orders = (by_name[n][0] for n in ("Proofs by studio", "Rush banners", "Order exports"))
    assert proofs.match and proofs.files and proofs.template and proofs.rename
    assert len(rush.match) == 2 and orders.files and orders.template
    [rip] = by_name["RIP-1"]
    assert (rip.max_waiting, rip.hours, rip.days) == (50, (360, 1320), frozenset(range(5)))
    eligible = next(r for r in by_name["Celtra"] if r.categories)
    assert eligible.clients == {"CIBC", "OLIVER", "ADIDAS", "PAYPAL", "RECKITTBENCKISER", "BAYER", "3M", "RANK"}
    assert eligible.categories == {"CELTRA"}


def test_database_on_a_network_filesystem_is_refused(tmp_path):
    mountinfo = write(tmp_path, f"36 25 0:32 / / rw - ext4 /dev/vda rw\n"
                                f"99 36 0:55 / {tmp_path}/share rw - nfs4 server:/export rw\n", "mountinfo")
    (tmp_path / "share").mkdir()
    with pytest.raises(store.DatabaseUnusable, match="nfs4 network filesystem"):
        sqlite.check_local(tmp_path / "share" / "pipeline.db", str(mountinfo))
    sqlite.check_local(tmp_path / "local" / "pipeline.db", str(mountinfo))


def test_check_config_accepts_the_example(tree):
    proc = tree.run("check-config", str(ROOT / "pipeline.example.toml"), check=False)
    assert proc.returncode == 0, proc.stderr
    assert "ok:" in proc.stdout and "10 routing rules" in proc.stdout


def test_check_config_takes_the_file_as_flag_or_argument(tree):
    assert tree.run("check-config", "--config", str(tree.config_path)).returncode == 0
    assert tree.run("check-config", str(tree.config_path)).returncode == 0


def test_check_config_names_the_bad_key_and_exits_78(tree):
    bad = write(tree.root, '[router]\nbatch_size = -5\n', "bad.toml")
    proc = tree.run("check-config", str(bad), check=False)
    assert proc.returncode == 78
    assert "[router] batch_size" in proc.stderr and "-5" in proc.stderr


def test_check_config_refuses_an_infinite_lease_and_exits_78(tree):
    bad = write(tree.root, '[router]\nlease = inf\n', "bad.toml")
    proc = tree.run("check-config", str(bad), check=False)
    assert proc.returncode == 78
    assert "[router] lease: expected a finite number above 0, got inf" in proc.stderr


def test_check_config_refuses_a_place_that_cannot_be_a_folder(tree):
    (tree.root / "blocker").write_text("a file where a folder should be")
    bad = write(tree.root, '[paths]\nstore = "blocker/store"\n', "bad.toml")
    proc = tree.run("check-config", str(bad), check=False)
    assert proc.returncode == 78
    assert "[paths] store" in proc.stderr and "is not a folder" in proc.stderr


def test_program_with_a_broken_config_exits_78_with_one_line(tree):
    bad = write(tree.root, '[router]\nbatch_size = "many"\n', "bad.toml")
    proc = tree.run("router", "--once", "--config", str(bad), check=False)
    assert proc.returncode == 78
    errors = [line for line in proc.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "[router] batch_size" in errors[0]


@pytest.mark.parametrize("hosts, message", [
    ('"dashboard.example.com"', "expected a list of non-empty strings"),
    ('["dashboard.example.com:443"]', "'dashboard.example.com:443' is not a host name"),
    ('["http://dashboard.example.com"]', "is not a host name"),
    ('["-dash.example.com"]', "is not a host name"),
    ('["dash board"]', "is not a host name"),
    ('["dash.example.com\\n"]', "is not a host name"),
    ('[""]', "expected a list of non-empty strings"),
])
def test_dashboard_hosts_must_be_host_names(tmp_path, hosts, message):
    with pytest.raises(ConfigError) as e:
        config_module.load(write(tmp_path, f"[dashboard]\nhosts = {hosts}\n"))
    assert "[dashboard] hosts: " in str(e.value) and message in str(e.value) and "\n" not in str(e.value)


def test_dashboard_hosts_are_kept_as_names_compare(tmp_path):
    cfg = config_module.load(write(tmp_path, '[dashboard]\nhosts = ["Dash.Example.com", "[2001:DB8:0::1]", "192.0.2.1"]\n'))
    assert cfg.dashboard.hosts == ("dash.example.com", "2001:db8::1", "192.0.2.1")
    assert config_module.load(write(tmp_path, "")).dashboard.hosts == ()
