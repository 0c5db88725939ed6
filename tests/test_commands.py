"""Every bin/ command has a --help, and the README's first lines give the two commands."""

import subprocess

import pytest

from conftest import BIN, ROOT

COMMANDS = sorted(p.name for p in BIN.iterdir()
                  if p.is_file() and not p.name.startswith("_") and p.name not in ("start", "test"))


def test_every_command_the_spec_names_exists():
    assert {"scanner", "watcher", "router", "notifier", "reporter", "status", "requeue", "report", "route",
            "check-config"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command):
    proc = subprocess.run([str(BIN / command), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: bin/{command}")
    assert "--config" in proc.stdout


def test_readme_opens_with_the_two_commands():
    head = "\n".join((ROOT / "README.md").read_text().splitlines()[:15])
    assert "bin/start" in head and "bin/test" in head


def test_ci_runs_the_readme_test_command():
    assert "bin/test" in (ROOT / ".ci" / "run").read_text()
