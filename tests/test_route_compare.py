"""bin/route --compare: where a day's routed jobs went, and where a candidate file's rules would send
them, read-only (docs/design.md#changing-the-configuration-live)."""

import re
import shutil
import sqlite3

import pytest

from conftest import MATRIX, job_document
from pipeline import store
from pipeline.store import sqlite

FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures"

# Against conftest's MATRIX: "Monday Rank" moved, "BISSELL-WRIKE/IN" removed, "ACME" added;
# "LOREAL/IN" and both "Celtra" rules as they were.
CANDIDATE = (MATRIX.replace('to = "dest/Monday Rank"', 'to = "dest/Monday Rank v2"')
             .replace('[[route]]\nname = "BISSELL-WRIKE/IN"\nclients = ["BISSELL"]\n'
                      'to = "dest/CLIENT-STORES/BISSELL-WRIKE/IN"\n', "")
             + '[[route]]\nname = "ACME"\nclients = ["ACME"]\nto = "dest/ACME"\n')
assert "BISSELL" not in CANDIDATE

DAY = [("RANK", "PRODUCTION")] * 3 + [("RANK", "CELTRA")] * 2 + [("LOREAL", "X")] * 4 + \
      [("BISSELL", "X")] * 2 + [("ACME", "X")] * 5


@pytest.fixture
def day(tree, db):
    for i, (client, category) in enumerate(DAY):
        tree.age(tree.drop(client, f"{client.lower()}-{i:02d}.json", job_document(client, category)))
    tree.age(tree.drop("RANK", "broken.json", "{"))                    # failed: not compared
    tree.run("scanner", "--once")
    tree.run("router", "--once")
    candidate = tree.root / "candidates" / "new.toml"   # elsewhere: its paths resolve as the running file's
    candidate.parent.mkdir()
    candidate.write_text(CANDIDATE)
    return candidate


def lines(out: str) -> dict[tuple[str, str], list[str]]:
    """The table's rows: (rule, the destination folder's last part) -> [gained, lost, same]."""
    rows = (re.fullmatch(r"(.*?)\s+(\d+)\s+(\d+)\s+(\d+)\s+(/.*)", row) for row in out.splitlines())
    return {(m[1], m[5].rsplit("/", 1)[-1]): [m[2], m[3], m[4]] for m in rows if m}


def test_a_day_compared_with_added_removed_and_changed_rules(tree, day):
    out = tree.run("route", "--compare", str(day), "--since", "1d").stdout
    assert out.splitlines()[0].startswith("16 routed job(s) detected since ")
    assert out.splitlines()[0].endswith(": 12 would change destination, 4 would not")
    table = lines(out)
    assert table[("Monday Rank", "Monday Rank")] == ["0", "5", "0"]            # moved: lost here...
    assert table[("Monday Rank", "Monday Rank v2")] == ["5", "0", "0"]         # ...gained there
    assert table[("LOREAL/IN", "IN")] == ["0", "0", "4"]
    assert table[("BISSELL-WRIKE/IN", "IN")] == ["0", "2", "0"]           # removed
    assert table[("ACME", "ACME")] == ["5", "0", "0"]                     # added
    assert table[("Celtra", "Celtra - Create_Rename - Project_Design File")] == ["0", "0", "2"]
    assert "job " not in out

    listed = tree.run("route", "--compare", str(day), "--since", "1d", "--list").stdout
    jobs = [l for l in listed.splitlines() if l.startswith("job ")]
    assert len(jobs) == 12
    rank = next(l for l in jobs if "RANK/rank-00.json" in l)
    assert f"+ Monday Rank ({tree.dest('Monday Rank v2') / 'rank-00.json'})" in rank
    assert f"- Monday Rank ({tree.dest('Monday Rank') / 'rank-00.json'})" in rank
    assert not any("loreal" in l for l in jobs)


def test_the_period_leaves_older_jobs_out(tree, db, day):
    db.run_sql("UPDATE jobs SET detected_at = detected_at - 3 * 86400 WHERE client_folder = 'ACME'")
    out = tree.run("route", "--compare", str(day), "--since", "2d").stdout
    assert out.splitlines()[0].startswith("11 routed job(s)") and ("ACME", "ACME") not in lines(out)
    assert tree.run("route", "--compare", str(day), "--since", "1w").stdout.startswith("16 ")


def test_rules_that_read_the_document_read_the_archived_copy(tree, day):
    day.write_text(CANDIDATE + '\n[[route]]\nname = "Studio"\nto = "dest/Studio"\n'
                              '[route.match]\n"JobSpecification.JobDetails.StudioCode" = ["LOREAL_STUDIO"]\n')
    (tree.store / "LOREAL" / "loreal-05.json").unlink()         # pruned: that one cannot be judged
    out = tree.run("route", "--compare", str(day), "--since", "1d").stdout
    assert "1 could not be judged: archived copy gone (pruned or moved)" in out
    assert lines(out)[("Studio", "Studio")] == ["3", "0", "0"]


@pytest.mark.parametrize("args, code, said", [
    (["--since", "soon"], 2, "expected a period such as 30m, 12h, 7d or 2w"),
    (["--since", "0d"], 2, "expected a period"),
    (["--list"], 2, "one of the arguments --explain --compare is required"),
])
def test_bad_arguments_are_usage_errors(tree, day, args, code, said):
    proc = tree.run("route", *(["--compare", str(day)] if "--list" not in args else []), *args, check=False)
    assert proc.returncode == code and said in proc.stderr


def test_a_bad_candidate_is_a_configuration_error_and_a_missing_one_a_usage_error(tree, day):
    day.write_text('[[route]]\nname = "X"\n')
    proc = tree.run("route", "--compare", str(day), check=False)
    assert proc.returncode == 78 and "[[route]] #1 to: required" in proc.stderr
    proc = tree.run("route", "--compare", str(day.parent / "none.toml"), check=False)
    assert proc.returncode == 2 and "none.toml: no such file" in proc.stderr


def test_a_read_only_connection_refuses_writes(tree, db):
    ro = store.connect(tree.config.paths.database, read_only=True)
    try:
        with pytest.raises(Exception, match="read.only|readonly|attempt to write"):
            with ro.write():
                ro.run_sql("DELETE FROM jobs")
    finally:
        ro.close()


@pytest.mark.sqlite_only
def test_a_read_only_connection_leaves_an_old_schema_as_it_is(tmp_path):
    path = tmp_path / "old.db"
    shutil.copyfile(FIXTURES / "schema-v8.db", path)
    store.connect(path, read_only=True).close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone() == (8,)
    assert sqlite.SCHEMA_VERSION > 8
