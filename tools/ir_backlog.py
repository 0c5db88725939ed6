"""Instructions the router spends per file, by valgrind's callgrind: repeatable whatever else the
machine is doing, where wall-clock figures are not.

    .venv/bin/python tools/ir_backlog.py [CHECKOUT] [N]

Routes a pre-scanned backlog of N files (the seeds' matrix, tools/workload.py) with
``python -m pipeline.router --once`` under callgrind, once with 1 file and once with N, from the
checkout given (default: this one), and prints the instructions per file with start-up excluded.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from workload import drop, write_config  # noqa: E402


def instructions(checkout: Path, n: int) -> int:
    """Instructions of one ``router --once`` over ``n`` pre-scanned files, start-up included."""
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = write_config(root, "[detect]\nmin_file_age = 0.2\n")
        old = time.time() - 10
        for i in range(n):
            os.utime(drop(root / "hot", i, rng), (old, old))
        env = dict(os.environ, PIPELINE_CONFIG=str(config), PYTHONHASHSEED="0")
        python = sys.executable
        subprocess.run([python, "-m", "pipeline.scanner", "--once"], env=env, cwd=checkout, check=True,
                       stderr=subprocess.DEVNULL)
        proc = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", python, "-m",
                               "pipeline.router", "--once"], env=env, cwd=checkout, capture_output=True, text=True)
        left = sum(1 for _ in (root / "hot").rglob("*.json"))
        if proc.returncode != 0 or left:
            raise SystemExit(f"router --once failed ({left} files left):\n{proc.stderr[-2000:]}")
        return int(re.search(r"Collected : (\d+)", proc.stderr).group(1))


def main() -> None:
    checkout = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else HERE.parent
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 600
    instructions(checkout, 1)                       # compiles the checkout's bytecode once
    one, many = instructions(checkout, 1), instructions(checkout, n)
    print(f"{checkout.name}: router --once, {(many - one) / (n - 1) / 1e6:.3f} M instructions per file "
          f"({n} files; start-up {one / 1e6:.0f} M)")


if __name__ == "__main__":
    main()
