"""Random bytes, random JSON documents and random file names through the scanner and the router.

Whatever arrives: no exception escapes a program, every file is accounted for (routed into the
archive, moved to FAILED with its sidecar, or left in the hot folder when it is not a job file),
and nothing is written outside the configured folders. Each example builds its own tree, so the
examples cannot see each other's files.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import Tree, job_document
from pipeline import store
from pipeline.hotfolder import eligible_name
from pipeline.files import NAME_MAX
from pipeline.jobs import Jobs
from pipeline.router import Router
from pipeline.scanner import Scanner

# Characters a file name may hold on Linux: anything but "/" and NUL (and lone surrogates, which
# are not characters; names that are not UTF-8 come from the bytes strategy below).
NAME_CHARS = st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",))


def fits(name: str) -> bool:
    return name not in (".", "..") and 0 < len(os.fsencode(name)) <= NAME_MAX


stems = st.one_of(
    st.text(NAME_CHARS, min_size=1, max_size=30),
    st.sampled_from(["job", "Job", "JOB", "a b  c", "100%", "%s%d%n", "%(x)s", "..", "...", "~$lock", ".hidden",
                     "..\\..\\escape", "C:\\temp\\x", "Café ünï 日本", "\u202eevil", "line\nbreak"]),
    st.integers(200, 250).map(lambda n: "é" * (n // 2)),                      # very long, multi-byte
    st.binary(min_size=1, max_size=20).filter(lambda b: b"/" not in b and b"\0" not in b).map(os.fsdecode),
)
extensions = st.sampled_from([".json", ".JSON", ".Json", ".json.tmp", ".json~", ".txt", ".part", ""])
names = st.builds(lambda stem, ext: stem + ext, stems, extensions).filter(fits)
clients = st.one_of(st.sampled_from(["RANK", "rank", "LOREAL", "CELTRA", "ACME", "Ünï Cödé", "with space", "100%",
                                     ".hidden"]),
                    st.text(NAME_CHARS, min_size=1, max_size=12)).filter(fits)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12)
client_codes = st.one_of(st.sampled_from(["RANK", "rank", "LOREAL", "CELTRA", "../../outside", "/etc", "..", "A\\B",
                                          "RANK\x00", "", " "]),
                         st.text(max_size=12), json_values)


@st.composite
def contents(draw, client: str) -> bytes:
    kind = draw(st.sampled_from(["bytes", "json", "job", "job", "job"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    code = draw(st.one_of(st.just(client), client_codes))
    category = draw(st.one_of(st.sampled_from(["CELTRA", "PRODUCTION", "celtra"]), json_values))
    document = job_document("RANK", Title=draw(st.text(max_size=30)))
    document["JobSpecification"]["JobDetails"].update(ClientCode=code, JobCategory=category)
    body = json.dumps(document, ensure_ascii=draw(st.booleans())).encode()
    return draw(st.sampled_from([b"", b"\xef\xbb\xbf"])) + body


@st.composite
def drops(draw) -> dict[tuple[str, str], bytes]:
    files = {}
    for _ in range(draw(st.integers(1, 6))):
        client, name = draw(clients), draw(names)
        files[(client, name)] = draw(contents(client))
    return files


def is_job_file(client: str, name: str) -> bool:
    """What detection takes: an eligible name in a client folder, both valid UTF-8."""
    try:
        client.encode(), name.encode()
    except UnicodeEncodeError:
        return False
    return eligible_name(name) and not client.startswith(".")


@settings(max_examples=100, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(files=drops())
@example(files={("RANK", "é" * 125 + ".json"): b"{", ("RANK", "Case.json"): json.dumps(job_document("RANK")).encode(),
                ("RANK", "case.json"): json.dumps(job_document("RANK")).encode(),
                ("rank", "case.json"): json.dumps(job_document("rank", "CELTRA")).encode(),
                ("RANK", os.fsdecode(b"caf\xe9.json")): b"{}"})
def test_random_files_through_the_router_lose_nothing_and_write_only_where_configured(files):
    base = Path(tempfile.mkdtemp(prefix="fuzz-"))
    try:
        check(base, files)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def check(base: Path, files: dict[tuple[str, str], bytes]) -> None:
    root = base / "tree"
    root.mkdir()
    tree = Tree(root)
    # Files that are all there: a cut one fails at once, rather than waiting to be completed.
    tree.write_config(detect="min_file_age = 0\nscan_interval = 1\nincomplete_grace = 0\n")
    for (client, name), content in files.items():
        path = tree.hot / client / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    db = store.connect(tree.config.paths.database)
    try:
        jobs = Jobs(db, "fuzz:1")
        Scanner(tree.config, jobs).scan("startup", "startup")          # raises if anything escapes
        Router(tree.config, jobs).run(once=True)
        rows = db.run_sql("SELECT client_folder, file_name, state, failed_step, last_error, failed_path, "
                              "archive_path FROM jobs").fetchall()
    finally:
        db.close()

    found = {(client, name): rest for client, name, *rest in rows}
    assert len(found) == len(rows), "one job per file"
    for (client, name), content in files.items():
        original = tree.hot / client / name
        if not is_job_file(client, name):
            assert (client, name) not in found
            assert original.read_bytes() == content, f"{client}/{name!r} not left as it was"
            continue
        state, step, error, failed_path, archive_path = found[(client, name)]
        assert error is None or "\n" not in error, f"a reason on more than one line: {error!r}"
        if state == "routed":
            assert Path(archive_path) == tree.store / client / name
            assert Path(archive_path).read_bytes() == content
            assert not original.exists()
        elif state == "failed":
            assert step == "validate" and error, (client, name, step, error)
            failed = Path(failed_path)
            assert failed.parent == tree.failed / client and failed.read_bytes() == content
            assert json.loads(failed.with_name(failed.name + ".error.json").read_text())["reason"] == error
            assert not original.exists() and not (tree.store / client / name).exists()
        else:
            raise AssertionError(f"{client}/{name!r} is {state}: {error}")

    # Nothing outside the configured folders; no temporary left inside them.
    allowed = [tree.hot, tree.store, tree.failed, tree.config.paths.error_log, root / "dest"]
    for path in base.rglob("*"):
        if path.is_dir() and any(path == a or path in a.parents for a in allowed):
            continue
        assert any(a in path.parents for a in allowed) or path.parent == root and path.name.startswith("pipeline."), \
            f"written outside the configured folders: {path}"
        if tree.hot not in path.parents:                     # the hot folder holds what was dropped
            assert not (path.name.startswith(".") and path.name.endswith(".tmp")), f"temporary left: {path}"
