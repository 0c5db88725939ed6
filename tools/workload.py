"""Realistic job files for benchmarks and chaos runs: 1-3 KB, mixed clients and categories."""

from __future__ import annotations

import json
import os
import random
import socket
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


# 20 rules using every feature of SPEC §5a (clients, categories, match on fields, list items and
# numbers, files globs, placeholders of every kind in to and rename), for `tools/bench --rules`.
# Five of them route the workload much as ROUTES does (so the copies per file stay comparable);
# the other fifteen are near misses that are evaluated to their last condition for many jobs.
RICH_ROUTES = """
[[route]]
name = "Monday Rank"
clients = ["RANK"]
to = "dest/Monday Rank/{JobCategory}"
rename = "{stem}_{ClientCode}.json"
[[route]]
name = "Monday RB"
clients = ["RECKITTBENCKISER"]
match = { "JobSpecification.Items.0.Item" = [0] }
to = "dest/Monday RB/{date:%Y-%m}"
[[route]]
name = "BISSELL-WRIKE/IN"
clients = ["BISSELL"]
files = ["59*.json"]
to = "dest/BISSELL-WRIKE/{StudioCode}/IN"
[[route]]
name = "LOREAL/IN"
match = { "JobSpecification.JobDetails.ClientCode" = ["loreal"] }
to = "dest/LOREAL/{client}/{field:JobSpecification.Items.0.Item}/IN"
[[route]]
name = "Celtra"
clients = ["CIBC", "OLIVER", "ADIDAS", "PAYPAL", "RECKITTBENCKISER", "BAYER", "3M", "RANK", "CELTRA"]
categories = ["CELTRA"]
to = "dest/Celtra/{ClientCode}"
rename = "{ClientCode}_{name}"
""" + "".join(f"""
[[route]]
name = "Near miss {n}"
clients = ["RANK", "RECKITTBENCKISER", "BISSELL", "LOREAL", "OLIVER", "CIBC", "ACME"]
{condition}
to = "dest/MISS/{{ClientCode}}/{{field:JobSpecification.Items.1.Size}}/{{date:%Y%m%d}}"
rename = "{{JobCategory}}-{{stem}}.json"
""" for n, condition in enumerate([
    'match = { "JobSpecification.JobDetails.StudioCode" = ["LDN", "NYC"] }',
    'match = { "JobSpecification.Items.3.Item" = [99] }',
    'match = { "JobSpecification.JobDetails.Rush" = [true] }',
    'files = ["*_proof.json", "*_PROOF_??.json"]',
    'match = { "JobSpecification.Items.0.Size" = ["1x1"] }',
    'categories = ["PRINT"]\nfiles = ["*.xml.json"]',
    'match = { "JobSpecification.JobDetails.JobNumber" = [1, 2, 3] }',
    'files = ["[!5]*.json"]',
    'match = { "JobSpecification.JobDetails.Title" = ["none"], "JobSpecification.Items.0.Item" = [0] }',
    'categories = ["SOCIAL"]\nmatch = { "JobSpecification.Items.2.Notes" = ["n"] }',
    'match = { "JobSpecification.JobDetails.Missing.Path" = ["x"] }',
    'files = ["order_*.json"]',
    'match = { "JobSpecification.Items.13.Item" = [13] }\nfiles = ["6*.json"]',
    'categories = ["DIGITAL"]\nmatch = { "JobSpecification.JobDetails.StudioCode" = ["CIBC"] }',
    'match = { "JobSpecification.Items.1.Item" = [2] }',
], 6))


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(root: Path, extra: str = "", routes: str = ROUTES) -> Path:
    """A benchmark's pipeline.toml; its dashboard gets a free port (supervisord starts one)."""
    path = root / "pipeline.toml"
    if "[dashboard]" not in extra:
        extra += f'[dashboard]\nlisten = "127.0.0.1:{free_port()}"\n'
    path.write_text('[paths]\nhot_folder = "hot"\nstore = "store"\nfailed = "failed"\n'
                    'error_log = "errors"\ndatabase = "pipeline.db"\n' + extra + routes)
    return path
