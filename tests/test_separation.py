"""No route can feed the hot folder: bin/check-config and every program refuse, naming the key."""

from __future__ import annotations

import os
import subprocess

import pytest

from conftest import job_document
from pipeline import cli

ROUTE = '[[route]]\nname = "{name}"\nclients = ["RANK"]\nto = "{to}"\n'


def routes(*pairs: tuple[str, str]) -> str:
    return "\n".join(ROUTE.format(name=name, to=to) for name, to in pairs)


def refused(tree, message: str) -> None:
    """bin/check-config and bin/router both exit 78 with ``message`` on stderr; no job was made."""
    check = tree.run("check-config", check=False)
    assert check.returncode == cli.EXIT_CONFIG and message in check.stderr, check.stderr
    router = tree.run("router", "--once", check=False)
    assert router.returncode == cli.EXIT_CONFIG and message in router.stderr, router.stderr


@pytest.fixture
def hot(tree):
    (tree.hot / "RANK").mkdir(parents=True)
    return tree.hot


def test_a_destination_that_is_a_symlink_into_the_hot_folder_is_refused(tree, hot):
    (tree.root / "dest").mkdir()
    os.symlink(hot / "RANK", tree.root / "dest" / "loop")
    tree.write_config(routes=routes(("Loop", "dest/loop")))
    refused(tree, "[[route]] 'Loop' to: ")
    refused(tree, "resolves into the hot folder")


def test_a_destination_below_a_symlinked_folder_into_the_hot_folder_is_refused(tree, hot):
    os.symlink(hot, tree.root / "shortcut")
    tree.write_config(routes=routes(("Deep", "shortcut/RANK/new/in")))
    refused(tree, "[[route]] 'Deep' to: ")


def test_a_bind_mount_of_the_hot_folder_is_seen_through(tree, hot):
    view = tree.root / "view"
    view.mkdir()
    proc = subprocess.run(["mount", "--bind", str(hot), str(view)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {proc.stderr.strip()}")
    try:
        # Same device and inode at another path: no path comparison can see it.
        tree.write_config(routes=routes(("Bound", "view/RANK")))
        refused(tree, "[[route]] 'Bound' to: ")
        tree.write_config(routes="")
        tree.config_path.write_text(tree.config_path.read_text().replace(
            'store = "store"', 'store = "view/archive"'))
        refused(tree, "[paths] store: ")
    finally:
        subprocess.run(["umount", "-l", str(view)])


def test_an_archive_or_error_log_symlinked_into_the_hot_folder_is_refused(tree, hot):
    os.symlink(hot, tree.root / "elsewhere")
    text = tree.config_path.read_text()
    tree.config_path.write_text(text.replace('error_log = "log/errors"', 'error_log = "elsewhere/errors"'))
    refused(tree, "[paths] error_log: ")


def test_a_route_into_the_archive_or_failed_is_refused(tree, hot):
    tree.write_config(routes=routes(("Into store", "store/RANK/copies")))
    refused(tree, "[[route]] 'Into store' to: ")
    (tree.root / "failed").mkdir()
    os.symlink(tree.root / "failed", tree.root / "bad-link")
    tree.write_config(routes=routes(("Into failed", "bad-link/x")))
    refused(tree, "lies in failed")


def test_a_route_under_a_regular_file_is_refused(tree, hot):
    (tree.root / "dest").mkdir()
    (tree.root / "dest" / "notes.txt").write_text("a file, not a folder")
    tree.write_config(routes=routes(("Under", "dest/notes.txt/in")))
    refused(tree, "which is not a folder")


def test_two_routes_that_are_one_real_folder_are_refused(tree, hot):
    (tree.root / "dest" / "Monday Rank").mkdir(parents=True)
    os.symlink(tree.root / "dest" / "Monday Rank", tree.root / "dest" / "rank-alias")
    tree.write_config(routes=routes(("Rank", "dest/Monday Rank"), ("Alias", "dest/rank-alias")))
    refused(tree, "[[route]] 'Alias' to: ")
    refused(tree, "is the same folder as [[route]] 'Rank'")


def test_two_rules_with_the_same_destination_stay_valid_and_copy_once(tree, hot):
    tree.write_config(routes=routes(("Rank", "dest/Monday Rank"), ("Rank again", "dest/Monday Rank")))
    assert tree.run("check-config").returncode == 0
    tree.age(tree.drop("RANK", "one.json", job_document("RANK")))
    tree.run("scanner", "--once")
    tree.run("router", "--once")
    assert os.listdir(tree.dest("Monday Rank")) == ["one.json"]


def test_a_template_whose_base_holds_a_symlink_to_the_hot_folder_is_refused(tree, hot):
    # dest/OUT-x would be the real hot folder: a job whose field is "x" would feed it.
    os.symlink(tree.hot.parent, tree.root / "dest")
    tree.write_config(routes=routes(("Templ", "dest/ho{field:A}/RANK")))
    refused(tree, "[[route]] 'Templ' to: a job could fill it to a folder in the hot folder")


def test_a_template_that_could_fill_to_the_archive_is_refused_and_a_separate_one_is_not(tree, hot):
    tree.write_config(routes=routes(("Templ", "st{field:A}/x")))    # "store" if A is "ore"
    refused(tree, "[[route]] 'Templ' to: ")
    refused(tree, "lies in store")
    tree.write_config(routes=routes(("Templ", "dest/st{field:A}/x")))
    assert tree.run("check-config").returncode == 0
