"""Realistic job files for benchmarks and chaos runs: 1-3 KB, mixed clients and categories."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

# (client, categories): the seeds' clients, with the CELTRA double route among them.
CLIENTS = [("RANK", ["PRODUCTION", "CELTRA"]), ("RECKITTBENCKISER", ["SOCIAL", "CELTRA"]),
           ("BISSELL", ["ORDER"]), ("LOREAL", ["CAMPAIGN"]), ("OLIVER", ["CELTRA", "DIGITAL"]),
           ("CIBC", ["DIGITAL"]), ("ACME", ["PRINT"])]

ROUTES = """
[[route]]
name = "Monday Rank"
clients = ["RANK"]
to = "dest/Monday Rank"
[[route]]
name = "Monday RB"
clients = ["RECKITTBENCKISER"]
to = "dest/Monday RB"
[[route]]
name = "BISSELL-WRIKE/IN"
clients = ["BISSELL"]
to = "dest/BISSELL-WRIKE/IN"
[[route]]
name = "LOREAL/IN"
clients = ["LOREAL"]
to = "dest/LOREAL/IN"
[[route]]
name = "Celtra"
clients = ["CIBC", "OLIVER", "ADIDAS", "PAYPAL", "RECKITTBENCKISER", "BAYER", "3M", "RANK", "CELTRA"]
categories = ["CELTRA"]
to = "dest/Celtra"
"""


def document(i: int, rng: random.Random) -> tuple[str, bytes]:
    client, categories = CLIENTS[i % len(CLIENTS)]
    details = {"ClientCode": client, "JobCategory": rng.choice(categories), "StudioCode": f"{client}_STUDIO",
               "Title": f"Campaign {i} " + "x" * rng.randint(0, 40), "JobNumber": 5900000 + i}
    items = [{"Item": n, "Size": f"{rng.randint(100, 2000)}x{rng.randint(100, 2000)}",
              "Notes": "y" * rng.randint(20, 120)} for n in range(rng.randint(4, 14))]
    body = json.dumps({"JobSpecification": {"JobDetails": details, "Items": items}}, indent=1).encode()
    return client, body


def drop(hot: Path, i: int, rng: random.Random) -> Path:
    """Write one job file the way upstream does: aside, then renamed into the client folder."""
    client, body = document(i, rng)
    folder = hot / client
    folder.mkdir(parents=True, exist_ok=True)
    tmp, target = folder / f".{i}.part", folder / f"{5900000 + i}.json"
    tmp.write_bytes(body)
    os.replace(tmp, target)
    return target


def write_config(root: Path, extra: str = "") -> Path:
    path = root / "pipeline.toml"
    path.write_text('[paths]\nhot_folder = "hot"\nstore = "store"\nfailed = "failed"\n'
                    'error_log = "errors"\ndatabase = "pipeline.db"\n' + extra + ROUTES)
    return path
