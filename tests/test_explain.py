"""bin/route --explain FILE: what the router would do with a file, touching nothing (docs/design.md#validation-and-routing)."""

import os
import re

import pytest

from conftest import job_document
from pipeline import store


def explain(tree, path, check=True):
    return tree.run("route", "--explain", str(path), check=check)


def untouched(tree, path, before):
    assert path.read_bytes() == before
    assert not tree.store.exists() and not tree.failed.exists() and not (tree.root / "dest").exists()
    if tree.engine == "sqlite":
        assert not tree.config.paths.database.exists()
    else:                                   # not even the tables are made
        with pytest.raises(store.DatabaseUnusable, match="no pipeline tables"):
            store.connect(tree.config.paths.database, create=False)


def test_a_rank_celtra_file_is_explained_as_archive_monday_rank_and_celtra(tree):
    path = tree.drop("RANK", "5903771.json", job_document("RANK", "CELTRA"))
    before = path.read_bytes()
    out = explain(tree, path).stdout
    assert f"archive:     {tree.store / 'RANK' / '5903771.json'}" in out
    assert f"route:       Monday Rank: {tree.dest('Monday Rank') / '5903771.json'}" in out
    assert "route:       Celtra: " in out
    assert "then:        removed from the hot folder" in out
    untouched(tree, path, before)


def test_an_unrouted_client_is_archived_only(tree):
    path = tree.drop("ACME", "1.json", job_document("ACME", "CELTRA"))
    assert "route:       none (no rule matches: archived only)" in explain(tree, path).stdout


def test_an_invalid_file_shows_the_reason_and_its_failed_name(tree):
    path = tree.drop("RANK", "wrong.json", job_document("BISSELL"))
    before = path.read_bytes()
    out = explain(tree, path).stdout
    assert "outcome:     fails validation: ClientCode 'BISSELL' does not match its client folder 'RANK'" in out
    assert re.search(rf"moved to:    {re.escape(str(tree.failed / 'RANK'))}/\d{{8}}_\d{{6}}_wrong\.json "
                     r"\(with \d{8}_\d{6}_wrong\.json\.error\.json beside it\)", out)
    untouched(tree, path, before)


def test_a_file_over_the_size_limit_is_explained_with_the_routers_reason(tree):
    tree.write_config(router="max_file_bytes = 10")
    path = tree.drop("RANK", "big.json")
    out = explain(tree, path).stdout
    assert f"fails validation: file is {path.stat().st_size:,} bytes, over the limit of 10 (router.max_file_bytes)" in out


def test_a_symlink_is_never_followed(tree):
    target = tree.root / "outside.json"
    target.write_text('{"JobSpecification": {"JobDetails": {"ClientCode": "RANK", "JobCategory": "X"}}}')
    (tree.hot / "RANK").mkdir(parents=True)
    os.symlink(target, tree.hot / "RANK" / "link.json")
    assert "outcome:     ignored: symbolic links are never followed" in explain(tree, tree.hot / "RANK" / "link.json").stdout


def test_a_file_outside_a_client_folder_and_an_ignored_name_get_a_note(tree):
    stray = tree.root / "stray.txt"
    stray.write_text("{}")
    out = explain(tree, stray).stdout
    assert "not in a client folder of the hot folder" in out and "not one the pipeline picks up" in out


def test_a_missing_file_is_a_usage_error(tree):
    proc = explain(tree, tree.hot / "RANK" / "nope.json", check=False)
    assert proc.returncode == 2 and "no such file" in proc.stderr
