"""Route a pre-dropped backlog with bin/scanner --once and bin/router --once; print files/s.

    .venv/bin/python tools/backlog.py [N]
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workload import drop, write_config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = write_config(root, "[detect]\nmin_file_age = 0.2\n")
        for i in range(n):
            old = time.time() - 10
            os.utime(drop(root / "hot", i, rng), (old, old))
        env = dict(os.environ, PIPELINE_CONFIG=str(config))
        subprocess.run([ROOT / "bin/scanner", "--once"], env=env, check=True, stderr=subprocess.DEVNULL)
        t0 = time.perf_counter()
        subprocess.run([ROOT / "bin/router", "--once"], env=env, check=True, stderr=subprocess.DEVNULL)
        seconds = time.perf_counter() - t0
        left = sum(1 for _ in (root / "hot").rglob("*.json"))
        print(f"bin/router --once: {n} files in {seconds:.2f}s = {n / seconds:.0f} files/s "
              f"(one router, batch 100, fsync on; {left} left in the hot folder)")


if __name__ == "__main__":
    main()
