"""The job file contract: [[schema]] checks at validate, files still being written seen by their
content, and done files (docs/design.md#the-job-file-contract)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import threading

import pytest

from conftest import BIN, Tree, job_document, wait_for
from pipeline import config as config_module
from pipeline.config import ConfigError
from pipeline.store.models import Job

RANK = "Monday Rank"
DATED = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["JobSpecification"],
    "properties": {"JobSpecification": {"properties": {"JobDetails": {"$ref": "#/$defs/details"}}}},
    "$defs": {"details": {"required": ["DueDate"],
                          "properties": {"DueDate": {"type": "string", "format": "date"},
                                         "JobNumber": {"$ref": "common.json#/$defs/number"}}}},
}
COMMON = {"$defs": {"number": {"type": "string", "pattern": "^[0-9]{7}$"}}}


def schema_file(tree: Tree, name: str, body) -> str:
    """Write a schema beside the config; returns the path as the config writes it."""
    folder = tree.root / "schemas"
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(body if isinstance(body, str) else json.dumps(body))
    return f"schemas/{name}"


def with_schemas(tree: Tree, *tables: str) -> None:
    schema_file(tree, "common.json", COMMON)
    tree.write_config("\n".join(f"[[schema]]\n{table}\n" for table in tables))


def dated(client: str, category: str = "PRODUCTION", **extra) -> dict:
    return job_document(client, category, **extra)


def route_once(tree: Tree, *names: str) -> subprocess.CompletedProcess:
    for name in names:
        tree.age(tree.hot / name)
    tree.run("scanner", "--once")
    return tree.run("router", "--once")


def job(name: str) -> Job:
    return Job.get(Job.file_name == name)


# -- [[schema]]: the configuration ------------------------------------------------------------------

@pytest.mark.parametrize("files, table, message", [
    ({}, 'file = "schemas/none.json"', "[[schema]] #1 file: schemas/none.json: no such file"),
    ({"bad.json": '{"type": "object",'}, 'file = "schemas/bad.json"',
     "[[schema]] #1 file: schemas/bad.json: not valid JSON: Expecting property name enclosed in double quotes"),
    ({"bad.json": '{"type": "strng"}'}, 'file = "schemas/bad.json"',
     "[[schema]] #1 file: schemas/bad.json: not a valid JSON Schema: type: 'strng' is not valid"),
    ({"bad.json": '{"properties": {"a": {"pattern": "(?<=a+)b"}}}'}, 'file = "schemas/bad.json"',
     "[[schema]] #1 file: schemas/bad.json: not a valid JSON Schema: properties.a.pattern: '(?<=a+)b' is not a 'regex'"),
    ({"bad.json": '{"$schema": "http://json-schema.org/draft-07/schema#"}'}, 'file = "schemas/bad.json"',
     "[[schema]] #1 file: schemas/bad.json: $schema is 'http://json-schema.org/draft-07/schema#': only "
     "JSON Schema draft 2020-12"),
    ({"bad.json": '{"$ref": "#/$defs/nowhere"}'}, 'file = "schemas/bad.json"',
     "[[schema]] #1 file: schemas/bad.json: $ref '#/$defs/nowhere' cannot be resolved"),
    ({"bad.json": '{"$ref": "missing.json"}'}, 'file = "schemas/bad.json"',
     "[[schema]] #1 file: schemas/bad.json: $ref 'missing.json': "),
    ({"bad.json": '{"unevaluatedProperties": false, "patternProperties": {"^a": {}}}'}, 'file = "schemas/bad.json"',
     "unevaluatedProperties together with patternProperties is not supported"),
    ({"ok.json": "{}"}, 'file = "schemas/ok.json"\nclients = []', "[[schema]] #1 clients: an empty list applies to nothing"),
    ({"ok.json": "{}"}, 'file = "schemas/ok.json"\nclient = ["RANK"]', "[[schema]] #1 client: unknown key"),
    ({}, 'clients = ["RANK"]', "[[schema]] #1 file: required"),
])
def test_a_schema_that_cannot_be_used_is_a_config_error_naming_the_file(tmp_path, files, table, message):
    (tmp_path / "schemas").mkdir()
    for name, text in files.items():
        (tmp_path / "schemas" / name).write_text(text)
    path = tmp_path / "pipeline.toml"
    path.write_text(f"[[schema]]\n{table}\n")
    if message is None:                 # accepted
        config_module.load(path)
        return
    with pytest.raises(ConfigError) as e:
        config_module.load(path)
    assert message in str(e.value) and str(path) in str(e.value)
    assert "\n" not in str(e.value)


class _Recorder(BaseHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):
        self.requests.append(self.path)
        body = json.dumps({"type": "string"}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


@pytest.mark.parametrize("ref", ["http://127.0.0.1:{port}/number.json", "https://127.0.0.1:{port}/number.json#/x",
                                 "//127.0.0.1:{port}/number.json"])
def test_a_remote_ref_is_refused_at_start_and_nothing_is_fetched(tree, ref):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        ref = ref.format(port=server.server_address[1])
        schema_file(tree, "remote.json", {"properties": {"JobNumber": {"$ref": ref}}})
        with open(tree.config_path, "a") as f:
            f.write('\n[[schema]]\nfile = "schemas/remote.json"\n')
        proc = tree.run("router", "--once", check=False)
        assert proc.returncode == 78
        [line] = [line for line in proc.stderr.splitlines() if "ERROR" in line]
        assert f"[[schema]] #1 file: schemas/remote.json: $ref '{ref}' is remote" in line
        assert "schemas are never fetched" in line
        assert _Recorder.requests == []
    finally:
        server.shutdown()
        server.server_close()


# -- [[schema]]: jobs --------------------------------------------------------------------------------

def test_a_job_breaking_its_clients_schema_fails_at_validate_with_one_line_and_every_error_beside_it(tree, db):
    schema_file(tree, "rank.json", DATED)
    with_schemas(tree, 'clients = ["rank"]\nfile = "schemas/rank.json"')
    tree.drop("RANK", "good.json", dated("RANK", DueDate="2027-01-15", JobNumber="5903771"))
    tree.drop("RANK", "bad.json", dated("RANK", DueDate="tomorrow", JobNumber="59-03"))
    tree.drop("RANK", "undated.json", dated("RANK"))
    tree.drop("LOREAL", "other.json", dated("LOREAL", DueDate="whenever"))     # no schema for LOREAL
    route_once(tree, "RANK/good.json", "RANK/bad.json", "RANK/undated.json", "LOREAL/other.json")

    assert (job("good.json").state, job("other.json").state) == ("routed", "routed")
    assert (tree.dest(RANK) / "good.json").exists()
    bad = job("bad.json")
    assert (bad.state, bad.failed_step) == ("failed", "validate")
    assert bad.last_error == ("JobSpecification.JobDetails.DueDate: 'tomorrow' is not a 'date' "
                              "([[schema]] #1 schemas/rank.json)")
    [sidecar] = (tree.failed / "RANK").glob("*_bad.json.error.json")
    body = json.loads(sidecar.read_text())
    assert body["reason"] == bad.last_error
    assert body["schema_errors"] == [
        bad.last_error,
        "JobSpecification.JobDetails.JobNumber: '59-03' does not match '^[0-9]{7}$' ([[schema]] #1 schemas/rank.json)"]
    undated = job("undated.json")
    assert undated.last_error == ("JobSpecification.JobDetails: 'DueDate' is a required property "
                                  "([[schema]] #1 schemas/rank.json)")


def test_a_schema_applies_by_client_and_category_ignoring_case_and_every_one_that_applies_is_checked(tree, db):
    schema_file(tree, "rank.json", DATED)
    schema_file(tree, "celtra.json", {"properties": {"JobSpecification": {"properties": {"JobDetails": {
        "required": ["Campaign"]}}}}})
    with_schemas(tree, 'clients = ["RANK"]\nfile = "schemas/rank.json"',
                 'categories = ["celtra"]\nfile = "schemas/celtra.json"')
    tree.drop("RANK", "both.json", dated("RANK", "CELTRA", DueDate="2027-01-15"))
    tree.drop("RANK", "rank.json", dated("RANK", "PRODUCTION", DueDate="2027-01-15"))
    tree.drop("OLIVER", "celtra.json", dated("OLIVER", "Celtra", Campaign="Spring"))
    tree.drop("OLIVER", "nocampaign.json", dated("OLIVER", "celtra"))
    route_once(tree, "RANK/both.json", "RANK/rank.json", "OLIVER/celtra.json", "OLIVER/nocampaign.json")
    assert job("both.json").last_error == ("JobSpecification.JobDetails: 'Campaign' is a required property "
                                           "([[schema]] #2 schemas/celtra.json)")
    assert job("rank.json").state == job("celtra.json").state == "routed"
    assert job("nocampaign.json").failed_step == "validate"


@pytest.mark.parametrize("pattern, value, reason", [
    # Python's re backtracks for ever on this one; the regex module does not.
    ("^(a+)+$", "a" * 30 + "!", "JobSpecification.JobDetails.Code: 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!' does not "
                                "match '^(a+)+$'"),
    # Catastrophic for both: the time limit stops it.
    ("^(a|a)*$", "a" * 40 + "!", "checking the job took longer than 2 s and was stopped at pattern '^(a|a)*$' "
                                 "on a value of 41 characters"),
])
def test_a_catastrophic_pattern_does_not_stall_the_router(tree, db, pattern, value, reason):
    schema_file(tree, "slow.json", {"properties": {"JobSpecification": {"properties": {"JobDetails": {
        "properties": {"Code": {"pattern": pattern}}}}}}})
    with_schemas(tree, 'file = "schemas/slow.json"')
    tree.drop("RANK", "slow.json", dated("RANK", Code=value))
    tree.drop("RANK", "fine.json", dated("RANK", Code="a"))
    route_once(tree, "RANK/slow.json", "RANK/fine.json")
    assert job("fine.json").state == "routed"
    slow = job("slow.json")
    assert (slow.state, slow.failed_step) == ("failed", "validate")
    assert slow.last_error == f"{reason} ([[schema]] #1 schemas/slow.json)"


def _peak_rss(tree: Tree, program: str, *args: str) -> int:
    """Bytes: the peak resident set of a bin/ program run to its end. Through a small Python of its
    own: a child's high-water mark starts at its parent's size, and pytest's is large."""
    measure = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    proc = subprocess.run([sys.executable, "-c", measure, str(BIN / program), *args], cwd=tree.root,
                          env=tree.env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout) * 1024


def _write(path, *parts: tuple[bytes, int]) -> int:
    """A file made of (piece, times) parts, written without holding it whole; returns its size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for piece, times in parts:
            for _ in range(times // 1024):
                f.write(piece * 1024)
            f.write(piece * (times % 1024))
    return path.stat().st_size


def test_a_50_mib_job_against_a_schema_validates_or_fails_cleanly_within_bounded_memory(tree, db):
    """A whole document costs up to ~10x its text as Python objects: one of many small values is
    refused before it is built; one of a few large values is built once and checked."""
    schema_file(tree, "big.json", {"properties": {"JobSpecification": {"properties": {
        "Notes": {"type": "string", "pattern": "^[a-z]*$"}, "Items": {"type": "array"}}}}})
    with_schemas(tree, 'file = "schemas/big.json"')
    room = 50 * 2**20 - 4096
    head = json.dumps(dated("RANK")).encode()[:-2]          # the document without its last two braces
    item = b'{"Code": "ABC", "Qty": 1}, '
    size = _write(tree.hot / "RANK" / "long.json", (head + b', "Notes": "', 1), (b"a", room - len(head) - 14), (b'"}}', 1))
    _write(tree.hot / "RANK" / "many.json", (head + b', "Items": [', 1), (item, (room - len(head)) // len(item)),
           (b'1]}}', 1))
    idle = _peak_rss(tree, "router", "--once")
    tree.age(tree.hot / "RANK" / "long.json")
    tree.age(tree.hot / "RANK" / "many.json")
    tree.run("scanner", "--once")
    peak = _peak_rss(tree, "router", "--once")
    assert job("long.json").state == "routed"
    many = job("many.json")
    assert (many.state, many.failed_step) == ("failed", "validate")
    assert many.last_error.startswith("too large to check against a [[schema]]: about ")
    # Reading a 50 MiB file costs ~2x its size already (bytes, text); the document once more.
    assert peak - idle < 4 * size, f"peak RSS {peak / 2**20:.0f} MiB, idle {idle / 2**20:.0f} MiB"


def test_explain_shows_each_schemas_verdict(tree):
    schema_file(tree, "rank.json", DATED)
    schema_file(tree, "celtra.json", {"required": ["JobSpecification"]})
    with_schemas(tree, 'clients = ["RANK"]\nfile = "schemas/rank.json"',
                 'categories = ["CELTRA"]\nfile = "schemas/celtra.json"')
    path = tree.drop("RANK", "5903771.json", dated("RANK", DueDate="tomorrow", JobNumber="x"))
    out = tree.run("route", "--explain", str(path)).stdout
    assert ("schema 1:    schemas/rank.json: fails: JobSpecification.JobDetails.DueDate: 'tomorrow' is not a "
            "'date' ([[schema]] #1 schemas/rank.json) (and 1 more)") in out
    assert "schema 2:    schemas/celtra.json: does not apply: categories: PRODUCTION is not one of CELTRA" in out
    assert "outcome:     fails validation: JobSpecification.JobDetails.DueDate: 'tomorrow'" in out
    path = tree.drop("RANK", "5903772.json", dated("RANK", DueDate="2027-01-15"))
    out = tree.run("route", "--explain", str(path)).stdout
    assert "schema 1:    schemas/rank.json: passes" in out
    assert f"route:       Monday Rank: {tree.dest(RANK) / '5903772.json'}" in out


@pytest.mark.parametrize("window", [0, 7, 64, None])
def test_a_document_kept_whole_is_the_document(window):
    """strictjson.ALL, what a schema check reads: the whole value, however the walk cut it."""
    from pipeline import strictjson
    document = {"L": [{"x": 1, "y": [1, {"z": None}], "e": {}}, 5, [], "s"], "J": {"c": [[9], {"d": True}]},
                "Items": [{"n": i, "s": "x" * i} for i in range(40)]}
    text = json.dumps(document)
    got = strictjson.loads(text, strictjson.ALL) if window is None else \
        strictjson._Walk(text, strictjson._FAST, window).document(strictjson.ALL)
    assert got == document


# Schemas whose subschemas are reached many ways: $ref and $defs, nested, through applicators, with
# the same subschema object met at several paths (what the remembered descend must keep apart).
SHAPES = {
    "$defs": {"item": {"type": "object", "required": ["Item"], "properties": {"Item": {"$ref": "#/$defs/n"}}},
              "n": {"type": "integer", "minimum": 1}},
    "type": "object",
    "properties": {
        "Items": {"type": "array", "items": {"$ref": "#/$defs/item"}, "minItems": 1},
        "Pair": {"prefixItems": [{"$ref": "#/$defs/n"}, {"type": "string", "pattern": "^[a-z]+$"}]},
        "Either": {"anyOf": [{"$ref": "#/$defs/n"}, {"type": "string", "maxLength": 3}]},
        "Both": {"allOf": [{"type": "object"}, {"required": ["a"]}], "unevaluatedProperties": False,
                 "properties": {"a": {"$ref": "#/$defs/n"}}},
        "If": {"if": {"properties": {"kind": {"const": "dated"}}},
               "then": {"required": ["due"], "properties": {"due": {"format": "date"}}}},
        "Map": {"additionalProperties": {"$ref": "#/$defs/item"}},
    },
}


def test_the_bounded_validator_finds_what_jsonschema_finds_at_the_same_paths(tmp_path):
    from jsonschema import Draft202012Validator, FormatChecker
    from pipeline.schema_validator import compile_file
    path = tmp_path / "shapes.json"
    path.write_text(json.dumps(SHAPES))
    ours, plain = compile_file(path), Draft202012Validator(SHAPES, format_checker=FormatChecker())
    documents = [
        {"Items": [{"Item": 1}, {"Item": 0}, {"x": 1}], "Pair": [0, "AB"], "Either": "long",
         "Both": {"a": 0, "b": 1}, "If": {"kind": "dated"}, "Map": {"k": {"Item": "x"}, "j": 3}},
        {"Items": [], "Pair": [3, "ab"], "Either": 2, "Both": {"a": 1}, "If": {"kind": "dated", "due": "2027-02-30"}},
        {"Items": [{"Item": -5}] * 3, "Map": {"a": {"Item": 1}, "b": {}}, "Both": []},
        {"Items": "no", "Pair": "no", "Either": None, "If": {"kind": "other"}},
    ]
    seen = lambda errors: sorted((list(e.absolute_path), list(e.absolute_schema_path), e.message) for e in errors)
    for _ in range(2):          # the second pass meets only remembered validators
        for document in documents:
            assert seen(ours.iter_errors(document)) == seen(plain.iter_errors(document))
    assert seen(ours.iter_errors(documents[0]))      # the documents do break the schema

# -- files still being written, seen by their content -------------------------------------------------

FULL = json.dumps(job_document("RANK", Title="written in two parts " + "x" * 200)).encode()


@pytest.mark.parametrize("cut", [0, 1, 20, 37, len(FULL) // 2, len(FULL) - 2, len(FULL) - 1])
def test_a_text_that_stops_inside_a_value_ends_early(cut):
    from pipeline.strictjson import ends_early
    assert ends_early(FULL[:cut]) and ends_early(b"  \n") and ends_early("{\"a\": \"é".encode()[:-1])
    assert not ends_early(FULL)


@pytest.mark.parametrize("text", [b'{"a": 1,, "b": 2}', b'{"a" 1}', b'{"a": tru, "b": 1}', b'{"a": 1}}',
                                  b'{"a": NaN', b'{"a": "\\uZZ'])
def test_a_syntax_error_in_the_middle_does_not_end_early(text):
    from pipeline.strictjson import ends_early
    assert not ends_early(text)


def write_in_place(path, data: bytes, mode: str = "wb") -> None:
    """Written where it lies, without a rename: what an upstream writing over a share does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, mode) as f:
        f.write(data)


def events(job_id: int) -> list[str]:
    from pipeline.store.models import JobEvent
    return [e.detail for e in JobEvent.select().where(JobEvent.job == job_id).order_by(JobEvent.id)]


def test_an_empty_or_cut_file_within_the_grace_waits_and_is_read_again(tree, db):
    path = tree.hot / "RANK" / "cut.json"
    write_in_place(path, FULL[:len(FULL) // 2])
    write_in_place(tree.hot / "RANK" / "empty.json", b"")
    tree.run("scanner", "--once")
    tree.run("router", "--once")
    for name in ("cut.json", "empty.json"):
        waiting = job(name)
        assert (waiting.state, waiting.attempts) == ("detected", 0)
        assert waiting.last_error == "incomplete JSON, still being written?"
        assert (tree.hot / "RANK" / name).exists() and not tree.failed.exists()
        assert events(waiting.id)[-1].startswith("read again in ")


def test_a_cut_file_older_than_the_grace_fails_as_invalid_json(tree, db):
    path = tree.hot / "RANK" / "cut.json"
    write_in_place(path, FULL[:40])
    tree.age(path, 31)
    tree.run("scanner", "--once")
    tree.run("router", "--once")
    cut = job("cut.json")
    assert (cut.state, cut.failed_step) == ("failed", "validate")
    assert cut.last_error.startswith("invalid JSON: Unterminated string starting at")
    assert list((tree.failed / "RANK").glob("*_cut.json"))


@pytest.mark.parametrize("grace, content", [("", b'{"JobSpecification": {"JobDetails": {,}}, "x": '),
                                            ("incomplete_grace = 0\n", FULL[:40])])
def test_a_syntax_error_in_the_middle_or_no_grace_fails_at_once(tree, db, grace, content):
    tree.write_config(detect=grace)
    write_in_place(tree.hot / "RANK" / "bad.json", content)
    tree.run("scanner", "--once")
    tree.run("router", "--once")
    bad = job("bad.json")
    assert (bad.state, bad.failed_step) == ("failed", "validate")
    assert bad.last_error.startswith("invalid JSON: ")


def test_a_file_written_in_two_parts_is_routed_once_complete_with_the_real_watcher_and_router(tree, db):
    (tree.hot / "RANK").mkdir(parents=True)
    watcher, router = tree.spawn("watcher"), tree.spawn("router")
    try:
        wait_for(lambda: "watching" in tree.logs("watcher"), message="the watch")
        path = tree.hot / "RANK" / "5903771.json"
        write_in_place(path, FULL[:len(FULL) // 2])
        wait_for(lambda: Job.select().where(Job.last_error == "incomplete JSON, still being written?").count(),
                 message="the first part waiting")
        inode = path.stat().st_ino
        write_in_place(path, FULL[len(FULL) // 2:], "ab")
        assert path.stat().st_ino == inode
        wait_for(lambda: Job.select().where(Job.state == "routed").count(), message="the file routed")
    finally:
        for proc in (watcher, router):
            proc.terminate()
            proc.wait(30)
    [routed] = Job.select()
    assert (routed.state, routed.size) == ("routed", len(FULL))
    assert (tree.store / "RANK" / "5903771.json").read_bytes() == FULL
    assert (tree.dest(RANK) / "5903771.json").read_bytes() == FULL
    assert any(e.startswith("file changed before its content was read") for e in events(routed.id))
    assert not tree.files(tree.hot)


def test_a_waiting_job_follows_its_file_when_no_detector_saw_the_rest(tree, db):
    path = tree.hot / "RANK" / "a.json"
    write_in_place(path, FULL[:30])
    tree.run("scanner", "--once")
    tree.run("router", "--once")
    [waiting] = Job.select()
    write_in_place(path, FULL[30:], "ab")
    Job.update(next_attempt_at=0).execute()         # due now, rather than after its short wait
    tree.run("router", "--once")
    [routed] = Job.select()
    assert (routed.id, routed.state, routed.size) == (waiting.id, "routed", len(FULL))
    assert f"file changed before its content was read (30 -> {len(FULL)} bytes): the job follows it" in events(routed.id)


def test_a_waiting_job_whose_rest_was_detected_as_a_job_of_its_own_ends_with_the_reason(tree, db):
    from pipeline.jobs import Jobs
    from pipeline.scanner import Scanner
    from pipeline.states import ROUTE_QUEUE
    path = tree.hot / "RANK" / "a.json"
    write_in_place(path, FULL[:30])
    tree.run("scanner", "--once")
    jobs = Jobs(db, "other-router:1")
    batch = jobs.claim(ROUTE_QUEUE, 10, 60)            # a router holds it as the rest is written
    write_in_place(path, FULL[30:], "ab")
    Scanner(tree.config, jobs).scan("periodic", "periodic")
    jobs.release(batch.token, [j.id for j in batch.jobs])
    tree.run("router", "--once")
    first, second = Job.select().order_by(Job.id)
    assert (first.state, first.failed_step) == ("failed", "detect")
    assert first.last_error == f"replaced by a newer version of the file while it was being written (job {second.id})"
    assert (second.state, second.size) == ("routed", len(FULL))


# -- done files ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, message", [
    ('".json"', "'.json' would make every job file a marker"), ('"done/x"', "cannot end a file name"),
    ('".."', "cannot end a file name"), ('".do\\nne"', "cannot end a file name"), ("1", "expected a string")])
def test_a_done_suffix_that_cannot_name_a_marker_is_refused(tmp_path, value, message):
    path = tmp_path / "pipeline.toml"
    path.write_text(f"[detect]\ndone_suffix = {value}\n")
    with pytest.raises(ConfigError) as e:
        config_module.load(path)
    assert "[detect] done_suffix: " in str(e.value) and message in str(e.value)


@pytest.mark.parametrize("suffix, name, job_file", [
    (".done", "5903771.json.done", "5903771.json"), (".done", "5903771.JSON.done", "5903771.JSON"),
    (".done.json", "5903771.json.done.json", "5903771.json"), (".done.json", "report.done.json", None),
    (".done", "5903771.json", None), (".done", ".done", None), (".done", "x.txt.done", None)])
def test_a_done_marker_is_never_a_job_file(suffix, name, job_file):
    from pipeline.hotfolder import eligible_name, marked
    assert marked(name, suffix) == job_file
    assert eligible_name(name, suffix) == (job_file is None and name.lower().endswith(".json") and name != ".done")


def done_tree(tree: Tree, suffix: str = ".done") -> None:
    tree.write_config(detect=f'done_suffix = "{suffix}"\n')


def test_the_scanner_takes_a_file_only_once_its_marker_stands_beside_it_and_logs_a_lone_marker_once(tree, db, caplog):
    from pipeline.jobs import Jobs
    from pipeline.scanner import Scanner
    done_tree(tree)
    scanner = Scanner(tree.config, Jobs(db, "scanner:1"))
    path = tree.drop("RANK", "5903771.json")
    tree.age(path)
    lone = tree.hot / "RANK" / "5903772.json.done"
    lone.write_bytes(b"")
    assert scanner.scan("periodic", "periodic") == 0
    (tree.hot / "RANK" / "5903771.json.done").write_bytes(b"")
    assert scanner.scan("periodic", "periodic") == 1
    assert scanner.scan("periodic", "periodic") == 0
    assert [j.file_name for j in Job.select()] == ["5903771.json"]
    said = [r.getMessage() for r in caplog.records if "has no job file beside it" in r.getMessage()]
    assert said == [f"done marker {lone} has no job file beside it; left as it is"]
    assert lone.exists()


@pytest.mark.parametrize("suffix", [".done", ".done.json"])
def test_the_watcher_takes_a_file_when_its_marker_arrives_and_the_router_removes_the_marker_after_it(tree, db, suffix):
    done_tree(tree, suffix)
    (tree.hot / "RANK").mkdir(parents=True)
    watcher = tree.spawn("watcher")
    try:
        wait_for(lambda: "watching" in tree.logs("watcher"), message="the watch")
        path = tree.drop("RANK", "5903771.json")
        write_in_place(tree.hot / "RANK" / "other.json", FULL)      # closed after writing: an event
        time.sleep(0.5)                                 # events come within ms: none may make a job
        assert Job.select().count() == 0
        marker = tree.hot / "RANK" / f"5903771.json{suffix}"
        write_in_place(marker, b"")
        wait_for(lambda: Job.select().count() == 1, message="the job of the marked file")
    finally:
        watcher.terminate()
        watcher.wait(30)
    taken = Job.get()
    assert (taken.file_name, taken.detected_by) == ("5903771.json", "realtime")
    tree.run("router", "--once")
    assert job("5903771.json").state == "routed"
    assert not path.exists() and not marker.exists()
    assert (tree.dest(RANK) / "5903771.json").exists() and not (tree.store / "RANK" / marker.name).exists()
    assert (tree.hot / "RANK" / "other.json").exists()      # still waiting for its own marker


def test_a_marker_stays_while_its_file_waits_and_goes_with_a_file_moved_to_failed(tree, db):
    tree.write_config(detect='done_suffix = ".done"\n', router="create_folders = false\n")
    for name, content in (("waits.json", job_document("RANK")), ("bad.json", b'{"a": 1,, "b": 2}')):
        tree.age(tree.drop("RANK", name, content))
        (tree.hot / "RANK" / f"{name}.done").write_bytes(b"")
    tree.run("scanner", "--once")
    tree.run("router", "--once")
    assert job("waits.json").state == "archived"           # its destination is not mounted: it waits
    assert (tree.hot / "RANK" / "waits.json").exists() and (tree.hot / "RANK" / "waits.json.done").exists()
    assert job("bad.json").failed_step == "validate"
    assert not (tree.hot / "RANK" / "bad.json").exists() and not (tree.hot / "RANK" / "bad.json.done").exists()
