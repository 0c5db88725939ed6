"""The installed product's face: the ``hotfolder`` command, ``init``, ``backup``, the version, and
messages that name the command the operator runs (``hotfolder X`` installed, ``bin/X`` here)."""

from __future__ import annotations

import configparser
import json
import re
import sqlite3
import subprocess
import sys

import pytest

from conftest import BIN, ROOT, job_document
from pipeline import __main__ as hotfolder, __version__
from pipeline.commands.init import hotfolder_command

PYTHON = sys.executable


def run(*args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    """``hotfolder ARGS`` as ``python -m pipeline ARGS`` (the console script runs the same main)."""
    return subprocess.run([PYTHON, "-m", "pipeline", *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env=env)


# -- the command ------------------------------------------------------------------------------------

def test_version_is_one_place_and_the_changelog_names_it():
    assert run("--version").stdout.strip() == f"hotfolder {__version__}"
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    assert setup["metadata"]["version"] == "attr: pipeline.__version__"
    assert re.search(rf"^## {re.escape(__version__)}\b", (ROOT / "CHANGELOG.md").read_text(), re.M)


def test_every_bin_command_is_a_subcommand():
    programs = {p.name for p in BIN.iterdir() if p.is_file() and not p.name.startswith("_")} - {"test"}
    assert programs <= set(hotfolder.SUBCOMMANDS)


@pytest.mark.parametrize("name", sorted(hotfolder.SUBCOMMANDS))
def test_every_subcommand_has_help_naming_the_command(name):
    proc = run(name, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: hotfolder {name}")


def test_help_lists_every_subcommand_and_no_arguments_is_a_usage_error():
    listed = run("--help")
    assert listed.returncode == 0
    for name in hotfolder.SUBCOMMANDS:
        assert re.search(rf"^  {re.escape(name)} ", listed.stdout, re.M)
    bare = run()
    assert bare.returncode == 2 and "usage: hotfolder COMMAND" in bare.stderr


def test_an_unknown_subcommand_is_one_line_and_exit_2():
    proc = run("rooter")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "unknown command 'rooter'" in proc.stderr and "router" in proc.stderr


def test_a_sidecar_names_the_requeue_command_the_operator_runs(tree, db):
    (tree.hot / "RANK").mkdir(parents=True)
    (tree.hot / "RANK" / "bad.json").write_text("{not json")
    tree.run("scanner", "--once")
    tree.run("router", "--once")
    sidecar, = (tree.failed / "RANK").glob("*.error.json")
    assert json.loads(sidecar.read_text())["requeue"].startswith("bin/requeue --failed --id ")

    (tree.hot / "BISSELL").mkdir()
    (tree.hot / "BISSELL" / "bad.json").write_text("{not json")
    tree.run("scanner", "--once")
    proc = run("router", "--once", cwd=tree.root, env=tree.env())
    assert proc.returncode == 0, proc.stderr
    sidecar, = (tree.failed / "BISSELL").glob("*.error.json")
    assert json.loads(sidecar.read_text())["requeue"].startswith("hotfolder requeue --failed --id ")


# -- init -------------------------------------------------------------------------------------------

def test_init_makes_a_site_whose_configuration_checks(tmp_path):
    site = tmp_path / "site"
    proc = run("init", str(site))
    assert proc.returncode == 0, proc.stderr
    for name in ("pipeline.toml", "supervisord.conf", "hotfolder-pipeline.service"):
        assert (site / name).is_file()
    assert (site / "data" / "JSON").is_dir()
    checked = run("check-config", str(site / "pipeline.toml"), cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert f"hot folder {site / 'data' / 'JSON'}" in checked.stdout
    assert f"database {site / 'var' / 'pipeline.db'}" in checked.stdout
    text = (site / "pipeline.toml").read_text()
    assert '"/data/' not in text and "smtp.example.com" not in text


def test_init_runs_every_program_of_the_repository_s_supervisord_conf(tmp_path):
    run("init", str(tmp_path / "site"))
    ours, site = configparser.RawConfigParser(), configparser.RawConfigParser()
    ours.read(ROOT / "supervisord.conf")
    site.read(tmp_path / "site" / "supervisord.conf")
    assert ours.sections() == site.sections()
    for section in ours.sections():
        for key, value in ours[section].items():
            expected = re.sub(r"%\(here\)s/bin/(\w+)", rf"{hotfolder_command()} \1", value)
            assert site[section][key] == expected, (section, key)
    unit = (tmp_path / "site" / "hotfolder-pipeline.service").read_text()
    assert f"ExecStart={hotfolder_command()} start --site {tmp_path / 'site'}" in unit
    assert f"ExecReload={hotfolder_command()} reload --site {tmp_path / 'site'}\n" in unit


def test_init_never_overwrites_a_site_without_force(tmp_path):
    site = tmp_path / "site"
    assert run("init", str(site)).returncode == 0
    (site / "pipeline.toml").write_text("# mine\n")
    again = run("init", str(site))
    assert again.returncode == 2
    assert "already holds a site (pipeline.toml, supervisord.conf, hotfolder-pipeline.service)" in again.stderr
    assert (site / "pipeline.toml").read_text() == "# mine\n"
    assert run("init", "--force", str(site)).returncode == 0
    assert (site / "pipeline.toml").read_text() != "# mine\n"


def test_init_into_a_place_it_cannot_write_says_so(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = run("init", str(blocker / "site"))
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"hotfolder init: cannot write the site in {blocker / 'site'}")


def test_start_without_a_site_says_how_to_make_one(tmp_path):
    proc = run("start", "--site", str(tmp_path))
    assert proc.returncode == 2
    assert "no supervisord.conf" in proc.stderr and "hotfolder init DIR" in proc.stderr


# -- backup -----------------------------------------------------------------------------------------

def test_backup_copies_the_table_while_it_is_open_or_prints_the_server_s_tool(tree, db):
    (tree.hot / "RANK").mkdir(parents=True)
    (tree.hot / "RANK" / "a.json").write_text(json.dumps(job_document("RANK")))
    tree.run("scanner", "--once")
    target = tree.root / "backup.db"
    proc = tree.run("backup", str(target))
    if tree.engine == "sqlite":
        copy = sqlite3.connect(target)
        assert copy.execute("SELECT file_name, state FROM jobs").fetchall() == [("a.json", "detected")]
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        copy.close()
        assert not list(tree.root.glob(".backup.db.*"))           # no temporary left behind
    else:
        assert "pg_dump --format=custom --file=" in proc.stdout and not target.exists()


def test_backup_never_replaces_a_file_without_force(tree, db):
    target = tree.root / "kept.db"
    target.write_text("precious")
    proc = run("backup", str(target), cwd=tree.root, env=tree.env())
    assert proc.returncode == 2 and "exists; --force replaces it" in proc.stderr
    assert target.read_text() == "precious"


@pytest.mark.sqlite_only
def test_backup_refuses_to_write_over_the_database_itself(tree, db):
    proc = run("backup", "--force", str(tree.config.paths.database), cwd=tree.root, env=tree.env())
    assert proc.returncode == 2 and "is the database itself" in proc.stderr


def test_backup_into_a_missing_folder_is_one_line(tree, db):
    proc = run("backup", str(tree.root / "no" / "such" / "b.db"), cwd=tree.root, env=tree.env())
    if tree.engine == "sqlite":
        assert proc.returncode == 1 and proc.stderr.startswith("hotfolder backup: cannot write")
        assert len(proc.stderr.strip().splitlines()) == 1
    else:
        assert proc.returncode == 0          # only prints the pg_dump line


# -- logs -------------------------------------------------------------------------------------------

def test_json_logs_parse_and_follow_one_job_across_scanner_router_and_notifier(tree, db):
    from helpers.api_server import ApiServer
    api = ApiServer()
    try:
        tree.write_config(f'[logging]\nformat = "json"\n[api]\nendpoint = "{api.url}"\n')
        tree.drop("RANK", "a\nb.json", json.dumps(job_document("RANK")))     # a name that would split a line
        tree.age(tree.hot / "RANK" / "a\nb.json", seconds=10)
        stderr = "".join(tree.run(program, "--once").stderr for program in ("scanner", "router", "notifier"))
    finally:
        api.close()
    lines = [json.loads(line) for line in stderr.splitlines()]         # every line is one JSON object
    assert {"time", "level", "program", "host", "pid", "message"} <= set(lines[0])
    about = [line for line in lines if "job" in line]
    assert {line["program"] for line in about} == {"scanner", "router", "notifier"}
    assert {line["job"] for line in about} == {1}
    assert {line["file"] for line in about} == {str(tree.hot / "RANK" / "a\nb.json")}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", lines[0]["time"])
    assert stderr.isascii()


def test_text_log_lines_about_a_job_end_with_its_id(tree, db):
    tree.drop("RANK", "a.json", json.dumps(job_document("RANK")))
    tree.age(tree.hot / "RANK" / "a.json", seconds=10)
    scanned, routed = (tree.run(program, "--once").stderr for program in ("scanner", "router"))
    assert re.search(r" INFO scanner\[\d+\] new job 1: RANK/a.json \(startup\) job=1$", scanned, re.M)
    assert re.search(r" INFO router\[\d+\] routed RANK/a.json -> .* job=1$", routed, re.M)


def test_a_bad_log_format_is_a_config_error_naming_the_key(tree):
    tree.config_path.write_text(tree.config_path.read_text() + '\n[logging]\nformat = "xml"\n')
    proc = tree.run("check-config", check=False)
    assert proc.returncode == 78
    assert "[logging] format" in proc.stderr and "'xml'" in proc.stderr


# -- the README -------------------------------------------------------------------------------------

def _first_job_blocks() -> tuple[dict, dict]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Your first job"):text.index("## Installing a site")]
    job, sidecar = (json.loads(block) for block in re.findall(r"```json\n(.*?)```", section, re.S))
    return job, sidecar


def test_the_readme_s_first_job_routes_as_it_says(tree, db):
    job, _ = _first_job_blocks()
    tree.drop("RANK", "5903771.json", job)
    tree.age(tree.hot / "RANK" / "5903771.json", seconds=10)
    tree.run("scanner", "--once")
    routed = tree.run("router", "--once").stderr
    assert (tree.store / "RANK" / "5903771.json").exists()
    assert (tree.dest("Monday Rank") / "5903771.json").exists()
    assert re.search(r"routed RANK/5903771.json -> Monday Rank \(\d+ ms\) job=1$", routed, re.M)


def test_the_readme_s_failed_first_job_gives_the_sidecar_it_shows(tree, db):
    job, shown = _first_job_blocks()
    del job["JobSpecification"]["JobDetails"]["JobCategory"]
    tree.drop("RANK", "5903771.json", job)
    tree.age(tree.hot / "RANK" / "5903771.json", seconds=10)
    tree.run("scanner", "--once")
    tree.run("router", "--once")
    sidecar, = (tree.failed / "RANK").glob("*_5903771.json.error.json")
    written = json.loads(sidecar.read_text())
    for key in ("file_name", "client_folder", "step", "reason", "attempts"):
        assert written[key] == shown[key], key
    assert written["requeue"] == f"bin/requeue --failed --id {written['job_id']}"
