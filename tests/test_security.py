"""Security review, with tests: paths that try to leave their folder, symlinks, HTML from files,
secrets in logs and tables, and TLS certificate checking (issue 7)."""

from __future__ import annotations

import base64
import datetime as dt
import html as html_module
import json
import os
import re
import ssl
import threading
import time
import zoneinfo
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import certifi
import pytest

from conftest import BIN, job_document
from pipeline.reporting import alerts, mail, render
from pipeline.config import Smtp
from pipeline.jobs import Jobs
from pipeline.store.models import Alert, AlertDelivery, Job
from pipeline.notifier import Notifier
from pipeline.router import Router
from pipeline.scanner import Scanner
from pipeline.validation import is_safe_component
from helpers.smtp_server import Inbox, free_port, self_signed, start_server

RANK = "Monday Rank"


def route(tree) -> tuple[str, str]:
    """The real scanner and router, once each; their logs."""
    return tree.run("scanner", "--once").stderr, tree.run("router", "--once").stderr


# -- paths that try to leave their folder -------------------------------------------------------------

ESCAPING_CODES = ["../../outside", "..", ".", "/tmp/outside", "RANK/../..", "..\\..\\outside", "RANK\\..\\x",
                  "RANK\x00/../x", "RANK\x00", "~root", "$HOME", "%2e%2e"]


def test_unsafe_clientcodes_are_refused_by_the_check():
    for code in ESCAPING_CODES:
        assert not is_safe_component(code), code
    for code in ("RANK", "3M", "BISSELL-WRIKE", "A_B", "x.y"):
        assert is_safe_component(code), code


def test_a_clientcode_or_file_name_that_tries_to_leave_its_folder_writes_nothing_outside(tree, db):
    neighbours = set(tree.root.parent.iterdir())            # where "../../outside" from a store folder lands
    assert not Path("/tmp/outside").exists()
    for i, code in enumerate(ESCAPING_CODES):
        tree.age(tree.drop("RANK", f"code{i}.json", job_document(code)))
    # Names that are single components on Linux but mean "up" elsewhere; a client folder likewise.
    for name in ("x\\..\\..\\y.json", "%2e%2e%2fz.json", "..\\..\\hidden.json"):
        tree.age(tree.drop("RANK", name, job_document("RANK")))
    tree.age(tree.drop("EVIL\\..\\..\\X", "e.json", job_document("EVIL\\..\\..\\X")))
    tree.age(tree.drop("RANK", "ok.json"))
    route(tree)

    for i, code in enumerate(ESCAPING_CODES):
        job = Job.get(Job.file_name == f"code{i}.json")
        assert (job.state, job.failed_step) == ("failed", "validate"), code
        assert Path(job.failed_path).parent == tree.failed / "RANK" and job.archive_path is None
    for name in ("x\\..\\..\\y.json", "%2e%2e%2fz.json", "ok.json"):
        job = Job.get(Job.file_name == name)
        assert job.state == "routed"
        assert (tree.store / "RANK" / name).is_file() and (tree.dest(RANK) / name).is_file()
    assert (tree.hot / "RANK" / "..\\..\\hidden.json").is_file()              # a dotfile: ignored, left alone
    evil = Job.get(Job.file_name == "e.json")
    assert evil.state == "failed" and Path(evil.failed_path).parent == tree.failed / "EVIL\\..\\..\\X"
    # Everything lies inside the store, the destinations, FAILED, the error log or the database.
    allowed = [tree.store, tree.failed, tree.root / "dest", tree.config.paths.error_log, tree.hot]
    for path in tree.root.rglob("*"):
        assert path.parent == tree.root and path.name.startswith("pipeline.") or \
            any(path == a or a in path.parents for a in allowed) or path in [a.parent for a in allowed], path
        assert path.resolve().is_relative_to(tree.root), path
    assert set(tree.root.parent.iterdir()) == neighbours and not Path("/tmp/outside").exists()


# -- symbolic links -----------------------------------------------------------------------------------

@pytest.fixture
def outside(tree):
    folder = tree.root / "outside"
    folder.mkdir()
    secret = folder / "secret.json"
    secret.write_text(json.dumps(job_document("RANK", Title="secret")))
    return secret


def test_a_symlink_in_the_hot_folder_to_a_file_or_folder_outside_is_never_followed_or_copied(tree, db, outside):
    client = tree.hot / "RANK"
    client.mkdir(parents=True)
    os.symlink(outside, client / "to-file.json")
    os.symlink(outside.parent, tree.hot / "TOFOLDER")                # a linked client folder
    os.symlink(outside.parent, client / "to-folder.json")
    os.symlink(client / "missing.json", client / "dangling.json")
    os.symlink("to-file.json", client / "chain.json")                 # a link to a link
    before = outside.read_bytes(), outside.stat()
    scanner_log, router_log = route(tree)
    assert Job.select().count() == 0
    for link in ("to-file.json", "to-folder.json", "dangling.json", "chain.json"):
        assert f"ignoring symbolic link {client / link} (links are not followed)" in scanner_log
        assert (client / link).is_symlink()
    assert f"ignoring symbolic link {tree.hot / 'TOFOLDER'}" in scanner_log
    assert (outside.read_bytes(), outside.stat()) == before
    assert not tree.store.exists() or tree.files(tree.store) == []


def test_a_file_swapped_for_a_symlink_after_detection_is_not_read_through_it(tree, db, outside):
    path = tree.drop("RANK", "swap.json")
    tree.age(path)
    tree.age(tree.drop("RANK", "ok.json"))
    tree.run("scanner", "--once")
    path.unlink()
    os.symlink(outside, path)                                           # between detection and routing
    router_log = tree.run("router", "--once").stderr
    job = Job.get(Job.file_name == "swap.json")
    reason = "file is a symbolic link (not followed); left where it is"
    assert (job.state, job.failed_step, job.last_error) == ("failed", "detect", reason)
    assert f"failed RANK/swap.json at detect: {reason}" in router_log
    assert path.is_symlink() and json.loads(outside.read_text())["JobSpecification"]["JobDetails"]["Title"] == "secret"
    assert not (tree.store / "RANK" / "swap.json").exists()
    assert Job.get(Job.file_name == "ok.json").state == "routed"


def test_a_symlink_where_a_copy_lands_is_replaced_never_written_through(tree, db, outside):
    before = outside.read_bytes()
    for folder in (tree.store / "RANK", tree.dest(RANK)):
        folder.mkdir(parents=True)
        os.symlink(outside, folder / "a.json")
    tree.age(tree.drop("RANK", "a.json"))
    route(tree)
    assert Job.get().state == "routed"
    assert outside.read_bytes() == before                               # the link's target is untouched
    for folder in (tree.store / "RANK", tree.dest(RANK)):
        copy = folder / "a.json"
        assert not copy.is_symlink() and json.loads(copy.read_text()) == job_document("RANK")


# -- HTML from files ----------------------------------------------------------------------------------

HOSTILE_FOLDER = "<i>ACME"                                   # a client folder name: no "/" possible
HOSTILE_NAME = "<script>alert(1)<img src=x onerror=alert(2)>.json"
HOSTILE_CATEGORY = "<svg onload=alert(3)>"
TAGS = ("<script", "<img", "<svg", "<i>", "<iframe")


def assert_escaped(html: str, *texts: str) -> None:
    # The report's own charts are SVG drawn by pipeline/charts.py (whose escaping test_charts.py
    # checks); any other <svg came from a file.
    lower = html.lower().replace('<svg class="chart" ', "")
    for tag in TAGS:
        assert tag not in lower, f"{tag} got into the HTML unescaped"
    shown = html_module.unescape(html).lower()
    for text in texts:
        assert text.lower() in shown, f"{text!r} is not shown"


def test_the_report_and_alert_templates_escape_every_value_taken_from_a_file(tree, db):
    tree.write_config(router="create_folders = false")                # RANK's destination is missing: jobs wait
    tree.dest("CLIENT-STORES/LOREAL/IN").mkdir(parents=True)
    tree.age(tree.drop("LOREAL", HOSTILE_NAME, job_document("LOREAL", HOSTILE_CATEGORY, Title="<b>t</b>",
                                                            StudioCode="\"'&<>")))
    tree.age(tree.drop(HOSTILE_FOLDER, HOSTILE_NAME, job_document(HOSTILE_FOLDER)))     # fails: unsafe ClientCode
    tree.age(tree.drop("RANK", HOSTILE_NAME, job_document("RANK", HOSTILE_CATEGORY)))  # waits for Monday Rank
    route(tree)
    assert sorted(j.state for j in Job.select()) == ["archived", "failed", "routed"]
    reason = Job.get(Job.state == "failed").last_error
    assert HOSTILE_FOLDER in reason

    # The daily report, by the real bin/report.
    when = Job.get(Job.state == "routed").routed_at
    day = dt.datetime.fromtimestamp(when, zoneinfo.ZoneInfo(tree.config.report.timezone)).date().isoformat()
    preview, text = tree.root / "report.html", tree.root / "report.txt"
    tree.run("report", "--date", day, "--preview", str(preview), "--text", str(text))
    assert_escaped(preview.read_text(), HOSTILE_FOLDER, HOSTILE_NAME, HOSTILE_CATEGORY, reason)
    assert HOSTILE_NAME in text.read_text()                           # the plain-text part shows them as they are

    # The alert: the failure and the job stuck on the missing destination.
    found = alerts.findings(db, time.time() + tree.config.alerts.stuck_after + 1, tree.config.alerts,
                            notify=bool(tree.config.api.endpoint))
    assert (found.failed_total, found.stuck_total) == (1, 1)
    rendered = render.alert(found.asdict(), tree.config)
    assert_escaped(rendered.html, HOSTILE_FOLDER, HOSTILE_NAME, reason, Job.get(Job.state == "archived").last_error)
    assert "\n" not in rendered.subject and "<" not in rendered.subject


# -- secrets --------------------------------------------------------------------------------------------

class EchoHandler(BaseHTTPRequestHandler):
    """Answers with ``server.status`` and a body that echoes every request header, as careless APIs do."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.received.append(dict(self.headers.items()))
        echoed = {k: v for k, v in self.headers.items() if k.startswith("X-") or k == "Authorization"}
        body = json.dumps({"error": "unauthorized", "you_sent": echoed}).encode()
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


class EchoServer:
    """An HTTP (or, with ``tls``, HTTPS) server on 127.0.0.1 that echoes the request headers."""

    def __init__(self, status: int = 200, tls: ssl.SSLContext | None = None):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), EchoHandler)
        self.server.daemon_threads = True
        self.server.status, self.server.received = status, []
        if tls:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def received(self) -> list[dict]:
        return self.server.received

    def url(self, scheme: str = "http", userinfo: str = "") -> str:
        return f"{scheme}://{userinfo}127.0.0.1:{self.server.server_address[1]}/jobs"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def stored_bytes(tree) -> bytes:
    """Every byte the pipeline wrote: database (and its WAL), FAILED, error logs."""
    out = b""
    for path in [*tree.root.glob("pipeline.db*"), *tree.failed.rglob("*"), *tree.config.paths.error_log.rglob("*")]:
        if path.is_file():
            out += path.read_bytes()
    return out


def status_outputs(tree, **env) -> str:
    if not (BIN / "status").exists():
        pytest.skip("bin/status does not exist yet")
    runs = [tree.run("status", "--json", check=False, **env), tree.run("status", check=False, **env)]
    for proc in runs:
        assert proc.returncode in (0, 1), proc.stderr                # healthy or not, but it worked
    return "".join(p.stdout + p.stderr for p in runs)


def test_api_headers_and_credentials_never_appear_in_logs_the_table_error_files_or_status(tree, db):
    token, password = "Bearer tok-3f9a1c-secret", "pa55-w0rd-in-url"
    basic = base64.b64encode(f"svc:{password}".encode()).decode()
    api = EchoServer(status=401)
    try:
        tree.write_config(f'[api]\nendpoint = "{api.url(userinfo=f"svc:{password}@")}"\n'
                          'headers = { X-Auth-Token = "env:SECURITY_TEST_TOKEN", X-Api-Key = "env:SECURITY_TEST_KEY" }\n')
        env = {"SECURITY_TEST_TOKEN": token, "SECURITY_TEST_KEY": "key-77aa-secret"}
        tree.age(tree.drop("RANK", "a.json"))
        tree.age(tree.drop("RANK", "bad.json", b"{"))
        logs = "".join(route(tree))
        logs += "".join(p.stdout + p.stderr for p in [tree.run("notifier", "--once", **env)])
    finally:
        api.close()
    sent = api.received[0]
    assert (sent["X-Auth-Token"], sent["Authorization"]) == (token, f"Basic {basic}")     # they were sent ...
    job = Job.get(Job.file_name == "a.json")
    assert (job.state, job.failed_step) == ("failed", "notify")
    assert job.last_error.startswith("API answered 401 Unauthorized: ") and "***" in job.last_error
    # ... and are nowhere else.
    written = logs + stored_bytes(tree).decode("utf-8", "replace") + status_outputs(tree, **env)
    for secret in (token, "tok-3f9a1c-secret", "key-77aa-secret", password, basic):
        assert secret not in written, f"{secret!r} leaked"


@pytest.mark.parametrize("secret", ["tok-secret\r\nX-Evil: 1", "tok-secret\n", "tok-secret\x1b[2J"])
def test_a_header_from_the_environment_with_a_line_break_stops_the_notifier_without_showing_it(tree, secret):
    """Header injection through an ``env:NAME`` value: refused at start (exit 78), naming the header
    and the variable, never the value; check-config refuses it too."""
    tree.write_config('[api]\nendpoint = "http://127.0.0.1:9/jobs"\n'
                      'headers = { X-Auth-Token = "env:SECURITY_TEST_TOKEN" }\n')
    proc = tree.run("notifier", "--once", check=False, SECURITY_TEST_TOKEN=secret)
    assert proc.returncode == 78
    [line] = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert "configuration error: [api] headers X-Auth-Token: the environment variable SECURITY_TEST_TOKEN " \
           "contains the control character U+00" in line
    check = tree.run("check-config", check=False, SECURITY_TEST_TOKEN=secret)
    assert check.returncode == 78 and "[api] headers X-Auth-Token: the environment variable" in check.stderr
    for output in (proc.stdout, proc.stderr, check.stdout, check.stderr):
        assert "tok-secret" not in output
    assert tree.run("check-config", SECURITY_TEST_TOKEN="tok-secret").returncode == 0     # a clean one is fine


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_the_smtp_password_never_appears_in_logs_the_table_or_status(tree, db):
    password, wrong = "smtp-Pa55-secret", "smtp-Wr0ng-secret"
    inbox = Inbox(password=password)
    port = free_port()
    controller = start_server(inbox, port, authenticator=inbox.authenticate, auth_required=True,
                              auth_require_tls=False)
    try:
        tree.write_config(f'[smtp]\nhost = "127.0.0.1"\nport = {port}\nstarttls = false\nusername = "pipeline"\n'
                          'password_env = "SECURITY_SMTP_PW"\n[alerts]\nrecipients = ["oncall@example.com"]\n'
                          'min_interval = 1\n[report]\nsender = "pipeline@example.com"\n')
        tree.age(tree.drop("RANK", "bad.json", b"{"))
        logs = "".join(route(tree))
        refused = tree.run("reporter", "--once", SECURITY_SMTP_PW=wrong)      # a wrong password: refused
        assert Alert.get().state == "failed" and "refused the login of 'pipeline'" in Alert.get().error
        AlertDelivery.update(next_attempt_at=0).execute()                     # let the retry come at once
        accepted = tree.run("reporter", "--once", SECURITY_SMTP_PW=password)
    finally:
        controller.stop()
    assert inbox.logins == [("pipeline", password)] and len(inbox.messages) == 1
    written = logs + refused.stderr + accepted.stderr + stored_bytes(tree).decode("utf-8", "replace") \
        + status_outputs(tree, SECURITY_SMTP_PW=password)
    for secret in (password, wrong):
        assert secret not in written, f"{secret!r} leaked"


# -- TLS ------------------------------------------------------------------------------------------------

@pytest.fixture
def certificate(tmp_path):
    """A self-signed certificate for 127.0.0.1, as (certificate, server context)."""
    return self_signed(tmp_path)


def notify_once(tree, db, monkeypatch, ca_bundle: Path | None = None) -> Job:
    """The notifier, once; ``ca_bundle`` as REQUESTS_CA_BUNDLE, which requests reads from the environment."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    if ca_bundle:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca_bundle))
    Notifier(tree.config, Jobs(db, "notifier:1")).run(once=True)
    return Job.get()


def routed_job(tree, db, endpoint: str, api: str = "") -> None:
    tree.write_config(f'[api]\nendpoint = "{endpoint}"\n{api}')
    tree.age(tree.drop("RANK", "a.json"))
    jobs = Jobs(db, "router:1")
    Scanner(tree.config, jobs).scan("startup", "startup")
    Router(tree.config, jobs).run(once=True)


def test_api_certificates_are_checked_by_default(tree, db, certificate, monkeypatch):
    cert, context = certificate
    api = EchoServer(tls=context)
    try:
        routed_job(tree, db, api.url("https"))
        job = notify_once(tree, db, monkeypatch)
        assert (job.state, job.attempts) == ("routed", 1)             # not sent: retried later
        assert re.fullmatch(r"API TLS error: (self-signed certificate|certificate verify failed.*) \(attempt 1 of 5\)",
                            job.last_error), job.last_error
        assert api.received == []
        db.run_sql("UPDATE jobs SET next_attempt_at = 0")          # its retry, now
        job = notify_once(tree, db, monkeypatch, ca_bundle=cert)         # the operator trusts its private CA
        assert (job.state, job.attempts) == ("notified", 2)
    finally:
        api.close()


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_api_certificate_checking_is_off_only_when_the_config_says_so(tree, db, certificate, monkeypatch):
    _, context = certificate
    api = EchoServer(tls=context)
    try:
        routed_job(tree, db, api.url("https"), "verify_tls = false\n")
        # Even with a CA bundle variable set for other programs (requests would let it win over the
        # session's setting): it does not trust this server, and the config said not to check.
        job = notify_once(tree, db, monkeypatch, ca_bundle=Path(certifi.where()))
    finally:
        api.close()
    assert (job.state, job.attempts, job.last_error) == ("notified", 1, None)
    assert len(api.received) == 1


def test_smtp_starttls_checks_the_servers_certificate(certificate):
    _, context = certificate
    inbox = Inbox()
    port = free_port()
    controller = start_server(inbox, port, tls_context=context, require_starttls=True)
    try:
        smtp = Smtp(host="127.0.0.1", port=port, starttls=True, username="", password_env="X", timeout=10)
        msg = mail.build(render.Rendered("subject", "<p>x</p>", "x"), "a@example.com", ["b@example.com"], time.time())
        with pytest.raises(mail.MailError, match="TLS failed: .*(CERTIFICATE_VERIFY_FAILED|certificate verify failed)"):
            mail.send(smtp, msg)
    finally:
        controller.stop()
    assert inbox.messages == []


def test_the_smtp_password_is_not_sent_without_tls_when_starttls_is_configured(monkeypatch):
    # A server that offers no STARTTLS (a downgrade): the send stops before the login.
    port = free_port()
    inbox = Inbox(password="pw")
    controller = start_server(inbox, port, authenticator=inbox.authenticate, auth_require_tls=False)
    monkeypatch.setenv("SEC_PW", "pw")
    try:
        smtp = Smtp(host="127.0.0.1", port=port, starttls=True, username="pipeline", password_env="SEC_PW", timeout=10)
        msg = mail.build(render.Rendered("s", "<p>x</p>", "x"), "a@example.com", ["b@example.com"], time.time())
        with pytest.raises(mail.MailError, match=f"^SMTP server 127.0.0.1:{port}: STARTTLS extension not supported "
                                                 "by server; nothing was sent$"):
            mail.send(smtp, msg)
    finally:
        controller.stop()
    assert inbox.logins == [] and inbox.messages == []
