"""Instructions a program spends starting, by valgrind's callgrind: repeatable whatever else the
machine is doing, where the wall clock of a start (``tools/bench --first``) is not.

    .venv/bin/python tools/ir_start.py [CHECKOUT ...]

For each checkout given (default: this one), with this virtual environment's Python: the imports
of each hot program's module and of supervisord's (``python -c "import pipeline.X"``), and the
whole of ``python -m pipeline.X --once`` on an empty site whose database exists (imports,
configuration, database, heartbeat, one step, exit). Python's own start (``python -c pass``) is
taken off every figure. Millions of instructions; about 5 M is a millisecond of CPU here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from workload import write_config  # noqa: E402

IMPORTS = ("pipeline.scanner", "pipeline.router", "pipeline.watcher", "pipeline.supervise")
RUNS = ("scanner", "router", "watcher")


def collected(args: list[str], checkout: Path, env: dict | None = None) -> int:
    """Instructions of ``python ARGS`` run in ``checkout`` (whose package it imports first)."""
    proc = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, *args],
                          cwd=checkout, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"python {' '.join(args)} failed in {checkout}:\n{proc.stderr[-2000:]}")
    return int(re.search(r"Collected : (\d+)", proc.stderr).group(1))


def figures(checkout: Path) -> dict[str, float]:
    """Millions of instructions of each start, Python's own start taken off."""
    # Compiled first, as bin/start does: else each run compiles what has no bytecode yet
    # (PYTHONDONTWRITEBYTECODE), or what changed since it was written.
    subprocess.run([sys.executable, "-m", "compileall", "-q", "pipeline"], cwd=checkout, check=True,
                   stdout=subprocess.DEVNULL)
    python = collected(["-c", "pass"], checkout)
    out = {f"import {m}": collected(["-c", f"import {m}"], checkout) - python for m in IMPORTS}
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, PIPELINE_CONFIG=str(write_config(Path(tmp))), PYTHONHASHSEED="0")
        for name in RUNS:       # once outside valgrind: the database and the bytecode exist after
            subprocess.run([sys.executable, "-m", f"pipeline.{name}", "--once"], cwd=checkout, env=env, check=True,
                           stderr=subprocess.DEVNULL)
        for name in RUNS:
            out[f"{name} --once"] = collected(["-m", f"pipeline.{name}", "--once"], checkout, env) - python
    return {what: n / 1e6 for what, n in out.items()}


def main() -> None:
    checkouts = [Path(c).resolve() for c in sys.argv[1:]] or [HERE.parent]
    results = {c: figures(c) for c in checkouts}
    width = max(len(what) for what in results[checkouts[0]])
    print(f"{'M instructions':<{width}}  " + "  ".join(f"{c.name:>10}" for c in checkouts))
    for what in results[checkouts[0]]:
        print(f"{what:<{width}}  " + "  ".join(f"{results[c][what]:10.1f}" for c in checkouts))


if __name__ == "__main__":
    main()
