"""A short SIGKILL chaos run of the whole supervised pipeline (tools/chaos has the full one)."""

import subprocess
import sys

from conftest import POSTGRES, ROOT


def test_a_short_chaos_run_loses_nothing(engine, database):
    on = ["--database", POSTGRES] if engine == "postgresql" else []
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "chaos.py"), "--files", "150",
                           "--kill-every", "0.5", "--timeout", "120", *on],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line)
    assert figures["files dropped"] == "150" and figures["jobs"] == "150"
    assert figures["files lost"] == "0" and figures["jobs stuck"] == "0"
    assert figures["drops with two jobs"] == "0" and figures["integrity_check"] == "ok"
    assert "chaos: PASSED" in proc.stdout
    assert figures["SIGKILLs"] != "{}"                     # it really killed something
