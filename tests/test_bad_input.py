"""docs/design.md#bad-input, case by case: bad input gives one clear line, loses nothing, and holds up no other job.

Each test drops its bad file beside good ones and runs the real programs (their stderr is the
program's log). It checks the job's state and failed step; the one-line reason in the table, the
``.error.json`` sidecar, the error log file and the program's log; where the file is now (hot
folder, archive or FAILED, never nowhere); and that the good files of the same batch were routed.
``pytest --collect-only -q tests/test_bad_input.py`` reads as the list of docs/design.md#bad-input, in its order.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers.api_server import HANG, ApiServer, closed_port
from conftest import MATRIX, Tree, growing, job_document, wait_for
from helpers.dblock import Locker
from helpers.mounts import Tmpfs, fill
from pipeline import cli
from pipeline.failures import ERROR_LOG_KEYS
from pipeline.store.models import Alert, Job, JobEvent

RANK, LOREAL, CELTRA = "Monday Rank", "CLIENT-STORES/LOREAL/IN", "Celtra - Create_Rename - Project_Design File"
# Good files that share the batch: (client, name, JobCategory, destination or None for archive only).
GOOD = (("RANK", "good_rank.json", "PRODUCTION", RANK), ("LOREAL", "good_loreal.json", "CAMPAIGN", LOREAL))
ENV = {"BAD_INPUT_TOKEN": "t0ken-never-logged"}


@pytest.fixture
def tmpfs():
    """Small filesystems mounted for the test, unmounted after it."""
    mounts = Tmpfs()
    yield mounts
    mounts.unmount_all()


class FastTree(Tree):
    """The shared tree with a shorter stability wait: these tests drop settled files."""

    def write_config(self, extra: str = "", routes: str = MATRIX, router: str = "", detect: str = "") -> None:
        super().write_config(extra, routes, router, detect or "min_file_age = 0.05\nscan_interval = 1\n")


@pytest.fixture
def tree(tmp_path, database) -> Tree:
    return FastTree(tmp_path, database=database)


def as_bytes(content: bytes | str | dict) -> bytes:
    if isinstance(content, dict):
        content = json.dumps(content)
    return content.encode("utf-8") if isinstance(content, str) else content


@dataclass
class Batch:
    """One bad file and the good ones beside it, after the real scanner and router ran once."""
    tree: Tree
    bad: dict[str, bytes]           # name -> content, in the client folder RANK
    good: tuple
    scanner_log: str
    router_log: str

    @staticmethod
    def job(name: str, client: str = "RANK") -> Job:
        return Job.get(Job.client_folder == client, Job.file_name == name)


def drop(tree: Tree, client: str, name: str, content) -> Path:
    """Drop a file as upstream does and make it look settled."""
    path = tree.drop(client, name, as_bytes(content))
    tree.age(path)
    return path


def drop_good(tree: Tree, good=GOOD) -> None:
    for client, name, category, _ in good:
        drop(tree, client, name, job_document(client, category))


def run_batch(tree: Tree, bad: dict | None = None, good=GOOD) -> Batch:
    """Drop the bad files (name -> content, into RANK) and the good ones; run bin/scanner and bin/router once."""
    bad = {name: as_bytes(content) for name, content in (bad or {}).items()}
    drop_good(tree, good)
    for name, content in bad.items():
        drop(tree, "RANK", name, content)
    scanner = tree.run("scanner", "--once")
    router = tree.run("router", "--once")
    return Batch(tree, bad, good, scanner.stderr, router.stderr)


def log_line(log: str, text: str) -> str:
    """The one line of ``log`` that contains ``text``."""
    lines = [line for line in log.splitlines() if text in line]
    assert len(lines) == 1, f"expected one line with {text!r} in the log, found {len(lines)}:\n{log}"
    return lines[0]


def error_log_entry(tree: Tree, job: Job) -> dict:
    [path] = tree.config.paths.error_log.glob(f"*_job{job.id}_*.error.json")
    entry = json.loads(path.read_text())
    assert tuple(entry) == ERROR_LOG_KEYS
    return entry


def assert_good_routed(batch: Batch) -> None:
    """The good files of the batch were routed as if nothing had happened."""
    tree = batch.tree
    for client, name, category, dest in batch.good:
        job = batch.job(name, client)
        assert (job.state, job.last_error) == ("routed", None), f"{client}/{name}: {job.last_error}"
        body = as_bytes(job_document(client, category))
        assert (tree.store / client / name).read_bytes() == body
        if dest:
            assert (tree.dest(dest) / name).read_bytes() == body
        assert not (tree.hot / client / name).exists()
        assert f"routed {client}/{name} -> " in batch.router_log


def assert_failed(batch: Batch, name: str, step: str, reason: str, client: str = "RANK") -> Job:
    """Failed at ``step`` with ``reason`` everywhere a person looks; the file is in FAILED/{client}."""
    tree = batch.tree
    assert "\n" not in reason
    job = batch.job(name, client)
    assert (job.state, job.failed_step, job.last_error) == ("failed", step, reason)
    # Where the file is now: FAILED/{client folder}/{time}_{name}, byte for byte; nowhere else.
    failed = Path(job.failed_path)
    assert failed.parent == tree.failed / client and re.fullmatch(r"\d{8}_\d{6}_.+", failed.name)
    assert failed.name.endswith("_" + name) or len(os.fsencode(failed.name + ".error.json")) == 255   # shortened
    assert failed.read_bytes() == batch.bad[name]
    assert not (tree.hot / client / name).exists()
    assert not (tree.store / client / name).exists()
    sidecar = json.loads(failed.with_name(failed.name + ".error.json").read_text())
    assert (sidecar["reason"], sidecar["step"], sidecar["job_id"]) == (reason, step, job.id)
    assert (sidecar["file_name"], sidecar["requeue"]) == (name, f"bin/requeue --failed --id {job.id}")
    entry = error_log_entry(tree, job)
    assert (entry["error_message"], entry["file_name"], entry["file_path"]) == (reason, name, str(failed))
    line = log_line(batch.router_log, f"failed {client}/{name} at {step}: ")
    assert f"failed {client}/{name} at {step}: {reason}; moved to {failed}" in line
    assert_good_routed(batch)
    return job


def assert_validation_fails(tree: Tree, cases: dict[str, tuple]) -> None:
    """One batch holding every bad file of ``cases`` (name -> (content, reason)) beside the good ones."""
    batch = run_batch(tree, {name: content for name, (content, _) in cases.items()})
    for name, (_, reason) in cases.items():
        assert_failed(batch, name, "validate", reason)


def details(**values) -> dict:
    return {"JobSpecification": {"JobDetails": values}}


# -- the content of the file ------------------------------------------------------------------------

def test_invalid_json_fails_validation_with_the_parsers_line_and_column(tree, db):
    assert_validation_fails(tree, {
        "bad.json": (b'{"JobSpecification": {"JobDetails": {"ClientCode": "RANK",}}}',
                     "invalid JSON: Expecting property name enclosed in double quotes at line 1 column 59"),
        "cut.json": (b'{"JobSpecification": {"JobDetails":\n', "invalid JSON: Expecting value at line 2 column 1"),
        # The parser's own text ends with "at" in these two: said once, not "at at".
        "open.json": (b'{"JobSpecification": {"JobDetails": {"ClientCode": "RANK',
                      "invalid JSON: Unterminated string starting at line 1 column 52"),
        "control.json": (b'{"JobSpecification": "a\x01b"}', "invalid JSON: Invalid control character at line 1 column 24"),
        "escape.json": (b'{"JobSpecification": "a\\xb"}', "invalid JSON: Invalid \\escape at line 1 column 24")})


def test_json_a_receiver_may_read_otherwise_fails_validation_in_one_batch(tree, db):
    """Standard JSON only, one reading only: NaN, a duplicate key (which ClientCode did upstream
    mean?), a number no receiver holds, text no database holds. One batch, each fails alone."""
    doc = '{"JobSpecification": {"JobDetails": {"ClientCode": "RANK", "JobCategory": "X", %s}}}'
    assert_validation_fails(tree, {
        "nan.json": (doc % '"Qty": NaN', "not allowed in a job file: NaN is not allowed (not standard JSON)"),
        "inf.json": (doc % '"Qty": [1, -Infinity]',
                     "not allowed in a job file: -Infinity is not allowed (not standard JSON)"),
        "dup.json": ('{"JobSpecification": {"JobDetails": {"ClientCode": "RANK", "ClientCode": "LOREAL", '
                     '"JobCategory": "X"}}}', "not allowed in a job file: duplicate key 'ClientCode' in an object"),
        "digits.json": (doc % ('"Qty": ' + "7" * 5000),
                        "not allowed in a job file: a number of 5,000 characters (at most 100 are allowed)"),
        "huge.json": (doc % '"Qty": 1e999', "not allowed in a job file: the number 1e999 is too large"),
        "surrogate.json": (doc % '"Title": "caf\\udce9"',
                           "JobSpecification.JobDetails.Title holds a lone UTF-16 surrogate (\\udce9), which is not text"),
    })


def test_a_nul_in_a_recorded_field_fails_validation_on_both_engines_before_any_copy(tree, db):
    """\\u0000 is valid JSON, but PostgreSQL's text refuses it: the job's outcome could not be
    recorded there, and it would be claimed again and again after its copies were made. One rule
    for both engines, at validation: the field is named, the file goes to FAILED, nothing is copied."""
    nul = "NUL character (\\u0000), which the job table cannot store"
    cases = {"title.json": (job_document("RANK", Title="Spring\x00sale"), "Title"),
             "category.json": (job_document("RANK", "CEL\x00TRA"), "JobCategory"),
             "studio.json": (job_document("RANK", StudioCode="LDN\x00"), "StudioCode"),
             "studio-only-nul.json": (job_document("RANK", StudioCode="\x00"), "StudioCode"),
             "client.json": (job_document("RANK\x00"), "ClientCode")}
    assert_validation_fails(tree, {name: (content, f"JobSpecification.JobDetails.{field} holds a {nul}")
                                   for name, (content, field) in cases.items()})
    for name in cases:
        assert Batch.job(name).claims == 0 and Batch.job(name).archive_path is None
        assert not (tree.dest(RANK) / name).exists() and not (tree.dest(CELTRA) / name).exists()


def test_empty_file_fails_validation(tree, db):
    assert_validation_fails(tree, {"empty.json": (b"", "file is empty"),
                                   "bom-only.json": (b"\xef\xbb\xbf", "file is empty")})


def test_only_whitespace_fails_validation(tree, db):
    assert_validation_fails(tree, {"blank.json": (b" \n\t \r\n  ", "file contains only whitespace")})


def test_non_utf8_fails_validation_naming_the_byte(tree, db):
    content = json.dumps(details(ClientCode="RANK", JobCategory="X", Title="Café"), ensure_ascii=False)
    assert_validation_fails(tree, {"latin1.json": (content.encode("latin-1"),     # é is the byte 0xe9 in Latin-1
                                                   f"not UTF-8 text (byte 0xe9 at offset {content.index('é')})")})


def test_utf8_with_bom_is_accepted_and_copied_byte_for_byte(tree, db):
    content = b"\xef\xbb\xbf" + json.dumps(job_document("RANK", "CELTRA", Title="Café ünï")).encode()
    batch = run_batch(tree, {"bom.json": content})
    job = batch.job("bom.json")
    assert (job.state, job.client_code, job.title) == ("routed", "RANK", "Café ünï")
    for place in (tree.store / "RANK", tree.dest(RANK), tree.dest(CELTRA)):
        assert (place / "bom.json").read_bytes() == content      # the BOM is kept in the copies
    assert not (tree.hot / "RANK" / "bom.json").exists()
    assert "routed RANK/bom.json -> Monday Rank, Celtra" in batch.router_log
    assert_good_routed(batch)


def test_json_that_is_an_array_string_or_number_fails_validation(tree, db):
    assert_validation_fails(tree, {
        "array.json": (b'[{"JobSpecification": {}}]', "JSON top level is an array, expected an object"),
        "string.json": (b'"RANK"', "JSON top level is a string, expected an object"),
        "number.json": (b"5903771", "JSON top level is a number, expected an object"),
        "null.json": (b"null", "JSON top level is null, expected an object")})


def test_missing_or_empty_clientcode_or_jobcategory_fails_validation(tree, db):
    assert_validation_fails(tree, {
        "no-spec.json": ({"Job": {}}, "missing JobSpecification"),
        "no-details.json": ({"JobSpecification": {}}, "missing JobSpecification.JobDetails"),
        "no-code.json": (details(JobCategory="PRODUCTION"), "missing JobSpecification.JobDetails.ClientCode"),
        "empty-code.json": (details(ClientCode="", JobCategory="PRODUCTION"),
                            "JobSpecification.JobDetails.ClientCode is empty"),
        "no-category.json": (details(ClientCode="RANK"), "missing JobSpecification.JobDetails.JobCategory"),
        "blank-category.json": (details(ClientCode="RANK", JobCategory="  "),
                                "JobSpecification.JobDetails.JobCategory is empty")})


def test_wrong_types_number_list_or_null_fail_validation(tree, db):
    must = "JobSpecification.JobDetails.{} must be a non-empty string, not {}".format
    assert_validation_fails(tree, {
        "code-number.json": (details(ClientCode=42, JobCategory="X"), must("ClientCode", "a number")),
        "code-list.json": (details(ClientCode=["RANK"], JobCategory="X"), must("ClientCode", "an array")),
        "code-null.json": (details(ClientCode=None, JobCategory="X"), must("ClientCode", "null")),
        "category-number.json": (details(ClientCode="RANK", JobCategory=7.5), must("JobCategory", "a number")),
        "category-boolean.json": (details(ClientCode="RANK", JobCategory=True), must("JobCategory", "a boolean")),
        "category-null.json": (details(ClientCode="RANK", JobCategory=None), must("JobCategory", "null")),
        "details-list.json": ({"JobSpecification": {"JobDetails": ["RANK"]}},
                              "JobSpecification.JobDetails must be an object, not an array"),
        "spec-null.json": ({"JobSpecification": None}, "JobSpecification must be an object, not null")})


def test_clientcode_differing_from_its_folder_fails_validation(tree, db):
    assert_validation_fails(tree, {
        "other.json": (job_document("BISSELL"), "ClientCode 'BISSELL' does not match its client folder 'RANK'")})
    assert not (tree.store / "BISSELL").exists() and not (tree.failed / "BISSELL").exists()


def test_clientcode_with_slash_backslash_dotdot_or_nul_fails_validation(tree, db):
    unsafe = "ClientCode {!r} is not a safe folder name (only letters, digits, _, - and . are allowed)".format
    codes = {"slash.json": "RANK/../../outside", "backslash.json": "..\\..\\outside", "dotdot.json": "..",
             "absolute.json": "/etc"}
    cases = {name: (job_document(code), unsafe(code)) for name, code in codes.items()}
    cases["nul.json"] = (job_document("RANK\x00"), "JobSpecification.JobDetails.ClientCode holds a NUL character "
                                                    "(\\u0000), which the job table cannot store")
    assert_validation_fails(tree, cases)
    database = ["pipeline.db", "pipeline.db-shm", "pipeline.db-wal"] if tree.engine == "sqlite" else []
    assert sorted(os.listdir(tree.root)) == sorted(["dest", "failed", "hot", "log", "pipeline.toml", "store", *database])
    assert os.listdir(tree.failed) == ["RANK"] and os.listdir(tree.store) == ["LOREAL", "RANK"]


def test_file_over_max_file_bytes_fails_validation_without_being_read(tree, db):
    tree.write_config(router="max_file_bytes = 2000")
    content = json.dumps(job_document("RANK", Title="x" * 2500)).encode()
    assert_validation_fails(tree, {
        "big.json": (content, f"file is {len(content):,} bytes, over the limit of 2,000 (router.max_file_bytes)")})


def test_deeply_nested_json_fails_validation_without_crashing(tree, db):
    deep = b"[" * 100_000 + b"]" * 100_000
    assert_validation_fails(tree, {
        "deep.json": (b'{"JobSpecification": {"JobDetails": {"ClientCode": "RANK", "X": ' + deep + b"}}}",
                      "invalid JSON: nested too deeply")})


# -- the file itself ----------------------------------------------------------------------------------

def test_symlink_pointing_outside_is_never_followed(tree, db):
    outside = tree.root / "outside"
    outside.mkdir()
    secret = outside / "secret.json"
    secret.write_text(json.dumps(job_document("RANK")))
    before = secret.read_bytes(), secret.stat().st_mtime_ns
    (tree.hot / "RANK").mkdir(parents=True)
    os.symlink(secret, tree.hot / "RANK" / "link.json")          # a file link
    os.symlink(outside, tree.hot / "LINKED")                      # a client folder link
    batch = run_batch(tree)
    assert Job.select().where(Job.file_name.in_(["link.json", "secret.json"])).count() == 0
    for path in (tree.hot / "RANK" / "link.json", tree.hot / "LINKED"):
        assert f"ignoring symbolic link {path} (links are not followed)" in log_line(batch.scanner_log, str(path))
        assert path.is_symlink()                                  # left where it is
    assert (secret.read_bytes(), secret.stat().st_mtime_ns) == before
    assert not (tree.store / "RANK" / "link.json").exists() and not (tree.store / "LINKED").exists()
    assert_good_routed(batch)


def test_file_still_being_written_is_not_taken_until_it_is_complete(tree, db):
    tree.write_config(detect="min_file_age = 0.3\n")                      # the writer adds a byte every 30 ms
    body = json.dumps(job_document("RANK", Title="written slowly")).encode()
    head, tail = body[:1], body[1:]          # spaces after the "{" keep the finished JSON valid
    path = tree.hot / "RANK" / "growing.json"
    with growing(path, head, tail):
        batch = run_batch(tree)                                    # the scanner looks while it grows
    assert Job.select().where(Job.file_name == "growing.json").count() == 0
    assert path.read_bytes().endswith(tail)                          # untouched, still in the hot folder
    assert_good_routed(batch)
    tree.age(path)
    tree.run("scanner", "--once")
    router = tree.run("router", "--once")
    assert Batch.job("growing.json").state == "routed"
    assert json.loads((tree.store / "RANK" / "growing.json").read_bytes()) == json.loads(body)
    assert "routed RANK/growing.json -> Monday Rank" in router.stderr


def test_file_removed_or_replaced_between_detection_and_routing_fails_at_detect_and_is_left_alone(tree, db):
    removed = drop(tree, "RANK", "removed.json", job_document("RANK"))
    drop(tree, "RANK", "replaced.json", job_document("RANK", Title="first"))
    drop_good(tree)
    scanner = tree.run("scanner", "--once")
    removed.unlink()                                                  # someone took it back
    replacement = json.dumps(job_document("RANK", Title="second")).encode()
    tree.drop("RANK", "replaced.json", replacement)                   # upstream wrote a new version
    batch = Batch(tree, {}, GOOD, scanner.stderr, tree.run("router", "--once").stderr)
    for name, reason in [
            ("removed.json", "file disappeared from the hot folder before it could be read"),
            ("replaced.json", "file was replaced by another file of the same name; the new version is "
                              "handled as a job of its own")]:
        job = batch.job(name)
        assert (job.state, job.failed_step, job.last_error) == ("failed", "detect", reason)
        assert (job.archive_path, job.failed_path) == (None, None)    # nothing to move: left alone
        assert error_log_entry(tree, job)["error_message"] == reason
        assert f"failed RANK/{name} at detect: {reason}" in log_line(batch.router_log, f"RANK/{name}")
        assert not (tree.store / "RANK" / name).exists()
    assert (tree.hot / "RANK" / "replaced.json").read_bytes() == replacement
    assert not (tree.failed / "RANK").exists()
    assert_good_routed(batch)
    tree.age(tree.hot / "RANK" / "replaced.json")                      # the new version is a job of its own
    tree.run("scanner", "--once")
    tree.run("router", "--once")
    [newer] = Job.select().where(Job.file_name == "replaced.json", Job.state == "routed")
    assert newer.title == "second" and (tree.store / "RANK" / "replaced.json").read_bytes() == replacement


def test_same_name_dropped_twice_gives_two_jobs_and_the_newer_copy_wins(tree, db):
    first = json.dumps(job_document("RANK", Title="first")).encode()
    second = json.dumps(job_document("RANK", Title="second")).encode()
    batch = run_batch(tree, {"twice.json": first})
    assert batch.job("twice.json").state == "routed"
    drop(tree, "RANK", "twice.json", second)
    tree.run("scanner", "--once")
    router = tree.run("router", "--once")
    jobs = list(Job.select().where(Job.file_name == "twice.json").order_by(Job.id))
    assert [(j.state, j.title) for j in jobs] == [("routed", "first"), ("routed", "second")]
    assert (tree.store / "RANK" / "twice.json").read_bytes() == second
    assert (tree.dest(RANK) / "twice.json").read_bytes() == second
    assert not (tree.hot / "RANK" / "twice.json").exists()
    assert "routed RANK/twice.json -> Monday Rank" in router.stderr
    assert_good_routed(batch)


NAMES = ["job with  spaces .json", "Café ünïcödé 日本語 ✓.json", "100% done %s %d %(name)s %%.json", "Case.json",
         "case.json", "l" * 240 + ".json"]


def test_names_with_spaces_unicode_and_percent_are_routed_and_failed_like_any_other(tree, db):
    for name in NAMES:
        drop(tree, "RANK", name, job_document("RANK", Title=name))
    latin1 = os.fsdecode(b"caf\xe9 latin-1.json")                     # not UTF-8: cannot be recorded
    drop(tree, "RANK", latin1, job_document("RANK"))
    long_bad = "b%s ü " * 33 + ".json"                                # 236 bytes
    batch = run_batch(tree, {"bad %s ünï space %.json": b"{", long_bad: b"{"})
    for name in NAMES:
        job = batch.job(name)
        assert (job.state, job.title) == ("routed", name)
        body = as_bytes(job_document("RANK", Title=name))
        assert (tree.store / "RANK" / name).read_bytes() == body
        assert (tree.dest(RANK) / name).read_bytes() == body
        assert f"routed RANK/{name} -> Monday Rank" in batch.router_log
    reason = "invalid JSON: Expecting property name enclosed in double quotes at line 1 column 2"
    assert_failed(batch, "bad %s ünï space %.json", "validate", reason)
    job = assert_failed(batch, long_bad, "validate", reason)
    assert len(os.fsencode(Path(job.failed_path).name + ".error.json")) <= 255   # shortened to fit
    # A name that is not UTF-8 is left where it is, with a line saying what to do.
    assert (tree.hot / "RANK" / latin1).exists()
    assert Job.select().where(Job.file_name.contains("latin-1")).count() == 0
    assert "caf\\xe9 latin-1.json: its name is not valid UTF-8; rename the file to have it processed" \
        in log_line(batch.scanner_log, "latin-1")
    assert os.listdir(tree.hot / "RANK") == [latin1]


SHARE_ROUTES = MATRIX + """
[[route]]
name = "Proofs"
clients = ["RANK"]
to = "dest/PROOFS/{field:JobSpecification.JobDetails.Desk}"
rename = "{stem}.json"
"""


def test_a_copy_named_as_a_share_cannot_hold_fails_at_route_keeping_its_archive_copy(tree, db):
    """A device name (con.json, as dropped or as a rule makes it), a trailing dot, a leading dot:
    an error or an invisible file on an SMB share. The job fails at route naming the rule; its
    archive copy, local, is kept; no destination gets a copy."""
    tree.write_config(routes=SHARE_ROUTES)
    bad = {"con.json": (job_document("RANK", Desk="LDN"),
                        "[[route]] 'Monday Rank': the file name 'con.json' is a name Windows shares cannot hold "
                        "(CON is a device name)"),
           "desk.json": (job_document("RANK", Desk="Com1"),
                         "[[route]] 'Proofs' to: {field:JobSpecification.JobDetails.Desk} gives 'Com1', "
                         "a name Windows shares cannot hold (COM1 is a device name)"),
           "dot.json": (job_document("RANK", Desk=".hidden"),
                        "[[route]] 'Proofs' to: {field:JobSpecification.JobDetails.Desk} gives '.hidden', "
                        "a hidden name (it starts with a dot) that the next hot folder would ignore"),
           "trail.json": (job_document("RANK", Desk="LDN."),
                          "[[route]] 'Proofs' to: {field:JobSpecification.JobDetails.Desk} gives 'LDN.', "
                          "a name Windows shares cannot hold (it ends with a dot)")}
    explained = drop(tree, "RANK", "Nul.json", job_document("RANK", Desk="LDN"))
    out = tree.run("route", "--explain", str(explained)).stdout
    assert ("outcome:     fails at route: [[route]] 'Monday Rank': the file name 'Nul.json' is a name Windows "
            "shares cannot hold (NUL is a device name)") in out
    explained.unlink()
    good = job_document("RANK", Desk="LDN")
    batch = run_batch(tree, {"good.json": good, **{name: content for name, (content, _) in bad.items()}}, good=())
    for name, (content, reason) in bad.items():
        job = batch.job(name)
        assert (job.state, job.failed_step, job.last_error, job.failed_path) == ("failed", "route", reason, None)
        assert (tree.store / "RANK" / name).read_bytes() == as_bytes(content)
        assert not (tree.hot / "RANK" / name).exists()
        assert f"failed RANK/{name} at route: {reason}" in log_line(batch.router_log, f"failed RANK/{name} at")
        assert error_log_entry(tree, job)["error_message"] == reason
    assert batch.job("good.json").state == "routed"
    assert tree.files(tree.root / "dest") == ["Monday Rank/good.json", "PROOFS/LDN/good.json"]


# -- the places ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("problem, why", [("missing", "destination folder is missing (share not mounted?)"),
                                          ("read-only", "Read-only file system"),
                                          ("full", "No space left on device")], ids=["missing", "read-only", "full"])
def test_destination_missing_read_only_or_full_makes_the_job_wait(tree, db, tmpfs, problem, why):
    good = (("LOREAL", "good_loreal.json", "CAMPAIGN", LOREAL), ("ACME", "good_acme.json", "PRINT", None))
    monday = tree.dest(RANK)
    if problem == "missing":
        tree.write_config(router="create_folders = false")           # a network share: never created here
        for folder in (tree.dest(LOREAL), tree.dest(CELTRA)):
            folder.mkdir(parents=True)
    else:
        tmpfs.mount(monday)
        if problem == "read-only":
            tmpfs.read_only(monday)
        else:
            fill(monday)
    content = json.dumps(job_document("RANK", "CELTRA")).encode()
    batch = run_batch(tree, {"waits.json": content}, good=good)
    job = batch.job("waits.json")
    reason = f"Monday Rank: {why} ({monday})"
    assert (job.state, job.failed_step, job.attempts, job.last_error) == ("archived", None, 1, reason)
    assert f"RANK/waits.json waits: {reason}" in log_line(batch.router_log, "waits.json")
    # The file is in the hot folder and the archive; the working destination has its copy.
    assert (tree.hot / "RANK" / "waits.json").read_bytes() == content
    assert (tree.store / "RANK" / "waits.json").read_bytes() == content
    assert (tree.dest(CELTRA) / "waits.json").read_bytes() == content
    assert not (monday / "waits.json").exists()
    assert [p for p in (os.listdir(monday) if monday.exists() else []) if p != "filler.bin"] == []   # no temporary
    assert not tree.failed.exists() and not list(tree.config.paths.error_log.glob("*"))
    assert_good_routed(batch)


# -- the API ------------------------------------------------------------------------------------------

def configure_api(tree: Tree, endpoint: str) -> None:
    tree.write_config(f'[api]\nendpoint = "{endpoint}"\ntimeout = 0.5\n'
                      'headers = { Authorization = "env:BAD_INPUT_TOKEN" }\n')


def test_api_down_every_job_waits_for_its_retry_and_none_is_lost(tree, db):
    configure_api(tree, f"http://127.0.0.1:{closed_port()}/jobs")
    run_batch(tree)
    proc = tree.run("notifier", "--once", **ENV)
    reason = "API unreachable: connection refused (attempt 1 of 5)"
    for client, name, _, dest in GOOD:
        job = Batch.job(name, client)
        assert (job.state, job.attempts, job.last_error) == ("routed", 1, reason)
        assert job.next_attempt_at == pytest.approx(job.updated_at + 2)
        assert f"{client}/{name}: {reason}; trying again in 2s" in log_line(proc.stderr, name)
        assert (tree.store / client / name).exists() and (tree.dest(dest) / name).exists()
    assert not tree.config.paths.error_log.exists() or not list(tree.config.paths.error_log.glob("*"))


@pytest.mark.parametrize("answer, outcome, reason", [
    (HANG, "retry", "API did not answer within 0.5 s (attempt 1 of 5)"),
    (422, "failed", 'API answered 422 Unprocessable Entity: {"error": "scripted"} (not retried)'),
    (503, "retry", "API answered 503 Service Unavailable (attempt 1 of 5)"),
    ((429, {"Retry-After": "7"}), "retry", "API answered 429 Too Many Requests (attempt 1 of 5)"),
], ids=["slow", "4xx", "5xx", "429"])
def test_api_slow_4xx_5xx_or_429_affects_only_its_own_job(tree, db, answer, outcome, reason):
    api = ApiServer()
    try:
        configure_api(tree, api.url)
        api.answer = lambda request: answer if b"the one the API refuses" in request.body else 200
        content = json.dumps(job_document("RANK", Title="the one the API refuses")).encode()
        run_batch(tree, {"api.json": content})
        proc = tree.run("notifier", "--once", **ENV)
    finally:
        api.close()
    job = Batch.job("api.json")
    assert job.last_error == reason and job.attempts == 1
    line = log_line(proc.stderr, "RANK/api.json")
    if outcome == "failed":
        assert (job.state, job.failed_step) == ("failed", "notify")
        assert line.endswith(f"failed RANK/api.json at notify: {reason} job={job.id}")
        entry = error_log_entry(tree, job)
        assert (entry["error_message"], entry["file_path"], entry["retry_count"]) == (reason, job.archive_path, 1)
    else:
        delay = 7 if isinstance(answer, tuple) else 2           # Retry-After: 7, else 2^1
        assert (job.state, job.failed_step) == ("routed", None)
        assert job.next_attempt_at == pytest.approx(job.updated_at + delay)
        assert line.endswith(f"RANK/api.json: {reason}; trying again in {delay}s job={job.id}")
    # The file stays in the archive and its destination; the other jobs of the batch were notified.
    assert (tree.store / "RANK" / "api.json").read_bytes() == content
    assert (tree.dest(RANK) / "api.json").read_bytes() == content
    for client, name, _, _ in GOOD:
        assert Batch.job(name, client).state == "notified"


# -- email, database, configuration ------------------------------------------------------------------

def test_smtp_down_the_alert_is_recorded_for_a_retry_and_no_job_is_touched(tree, db):
    port = closed_port()
    tree.write_config(f'[smtp]\nhost = "127.0.0.1"\nport = {port}\nstarttls = false\n'
                      '[alerts]\nrecipients = ["oncall@example.com"]\n'
                      '[report]\nrecipients = ["ops@example.com"]\nsender = "pipeline@example.com"\n')
    run_batch(tree, {"bad.json": b"{"})
    before = [(j.id, j.state, j.updated_at) for j in Job.select().order_by(Job.id)]
    files = {p: tree.files(p) for p in (tree.hot, tree.store, tree.failed, tree.root / "dest")}
    proc = tree.run("reporter", "--once")
    reason = f"SMTP server 127.0.0.1:{port} unreachable: Connection refused"
    [alert] = Alert.select()
    assert (alert.state, alert.error, alert.failures) == ("failed", reason, 1)
    assert (f"alert (1 failed, 0 stuck) not sent to oncall@example.com (attempt 1): {reason}; trying again in 120s"
            in log_line(proc.stderr, "not sent"))
    assert [(j.id, j.state, j.updated_at) for j in Job.select().order_by(Job.id)] == before
    assert {p: tree.files(p) for p in files} == files


@pytest.mark.sqlite_only
def test_database_locked_past_the_busy_timeout_programs_log_it_wait_and_lose_nothing(tree, db):
    drop(tree, "RANK", "bad.json", b"{")
    drop_good(tree)
    tree.run("scanner", "--once")
    drop(tree, "ACME", "late.json", job_document("ACME"))                # dropped while the lock is held
    busy = "database busy past the timeout (database is locked)"
    # Held until both programs have met it past their 5 s busy timeout, however long they take to start.
    with Locker(tree.config.paths.database, seconds=90) as lock:
        programs = [tree.spawn(p, "--once") for p in ("scanner", "router")]
        wait_for(lambda: busy in tree.logs("scanner") and busy in tree.logs("router"), timeout=60,
                 message="both programs to log the lock")
        lock.release()
        lock.wait()
        assert [p.wait(60) for p in programs] == [0, 0]
    scanner_log, router_log = tree.logs("scanner"), tree.logs("router")
    assert "Traceback" not in scanner_log + router_log
    batch = Batch(tree, {"bad.json": b"{"}, GOOD, scanner_log, router_log)
    assert_failed(batch, "bad.json", "validate",
                  "invalid JSON: Expecting property name enclosed in double quotes at line 1 column 2")
    tree.run("scanner", "--once")                                       # if the locked scan left it
    tree.run("router", "--once")
    assert Batch.job("late.json", "ACME").state == "routed"
    assert Job.select().where(Job.state == "failed").count() == 1
    assert not [e for e in JobEvent.select() if "database is locked" in (e.detail or "")]


@pytest.mark.parametrize("text, message", [
    ("[router]\nbatch_size = -5\n", "[router] batch_size: expected a whole number of at least 1, got -5"),
    ("[router\nbatch_size = 5\n", "not valid TOML"),
    ("[routr]\nbatch_size = 5\n", "[routr]: unknown section"),
], ids=["bad-value", "not-toml", "unknown-section"])
def test_broken_config_stops_each_program_with_one_line_and_touches_no_file(tree, db, text, message):
    drop_good(tree)
    tree.config_path.write_text(text)
    for program in ("scanner", "router"):
        proc = tree.run(program, "--once", check=False)
        assert proc.returncode == cli.EXIT_CONFIG
        [line] = proc.stderr.splitlines()
        assert f"configuration error: {tree.config_path}: " in line and message in line
    assert sorted(tree.files(tree.hot)) == ["LOREAL/good_loreal.json", "RANK/good_rank.json"]
    assert Job.select().count() == 0
    tree.write_config()                                                   # mended: everything flows
    tree.run("scanner", "--once")
    router = tree.run("router", "--once")
    assert_good_routed(Batch(tree, {}, GOOD, "", router.stderr))


def test_a_name_with_a_newline_still_gives_one_log_line_per_event(tree):
    tree.drop("RANK", "two\nlines.json", "{broken")
    tree.drop("RANK", "good.json")
    tree.run("scanner", "--once")
    proc = tree.run("router", "--once")
    lines = proc.stderr.splitlines()
    assert any("two\\nlines.json" in line and "invalid JSON" in line for line in lines)
    assert all(line[:4].isdigit() and line[10] == "T" for line in lines)    # each line is an event


def test_control_characters_in_a_name_reach_the_logs_escaped_and_unicode_stays(tree):
    """ESC (a terminal escape sequence), BEL, a C1 NEL and U+2028 in a file name: the real
    programs' log lines show them as escapes, so viewing a log cannot drive the terminal."""
    name = "bell\x07 esc\x1b[2J nel\x85 ls\u2028 café.json"
    tree.drop("RANK", name, "{broken")
    scanner = tree.run("scanner", "--once").stderr
    router = tree.run("router", "--once").stderr
    shown = "bell\\x07 esc\\x1b[2J nel\\x85 ls\\u2028 café.json"
    assert any(shown in line and "invalid JSON" in line for line in router.splitlines())
    for log in (scanner, router):
        assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]", log), log    # only the newlines between lines
        assert all(line[:4].isdigit() and line[10] == "T" for line in log.splitlines())
