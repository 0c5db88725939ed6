"""Realistic job files for benchmarks and chaos runs: 1-3 KB, mixed clients and categories."""

from __future__ import annotations

import json
import os
import random
import socket
import uuid
from pathlib import Path
from urllib.parse import quote

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


# 20 rules using every feature of the routing rules (clients, categories, match on fields, list items and
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


# A [[schema]] every job of ``document`` passes (tools/bench --schema): a site's contract for its
# job files, the details' fields with their types, formats and patterns, and the items' keys.
SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["JobSpecification"],
    "properties": {"JobSpecification": {
        "type": "object",
        "required": ["JobDetails", "Items"],
        "properties": {
            "JobDetails": {
                "type": "object",
                "required": ["ClientCode", "JobCategory", "JobNumber"],
                "properties": {"ClientCode": {"type": "string", "pattern": "^[A-Z0-9]+$"},
                               "JobCategory": {"enum": sorted({c for _, cs in CLIENTS for c in cs})},
                               "StudioCode": {"type": "string", "maxLength": 40},
                               "Title": {"type": "string", "minLength": 1},
                               "JobNumber": {"type": "integer", "minimum": 1}}},
            "Items": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/item"}}}}},
    "$defs": {"item": {"type": "object", "required": ["Item", "Size"]}},
}


def document(i: int, rng: random.Random, keys: int = 0) -> tuple[str, bytes]:
    """Job ``i``; with ``keys``, its details carry an OrderNumber, one of ``keys`` values in turn."""
    client, categories = CLIENTS[i % len(CLIENTS)]
    details = {"ClientCode": client, "JobCategory": rng.choice(categories), "StudioCode": f"{client}_STUDIO",
               "Title": f"Campaign {i} " + "x" * rng.randint(0, 40), "JobNumber": 5900000 + i}
    if keys:
        details["OrderNumber"] = f"ON{i % keys:05d}"
    items = [{"Item": n, "Size": f"{rng.randint(100, 2000)}x{rng.randint(100, 2000)}",
              "Notes": "y" * rng.randint(20, 120)} for n in range(rng.randint(4, 14))]
    body = json.dumps({"JobSpecification": {"JobDetails": details, "Items": items}}, indent=1).encode()
    return client, body


def drop(hot: Path, i: int, rng: random.Random, keys: int = 0) -> Path:
    """Write one job file the way upstream does: aside, then renamed into the client folder."""
    client, body = document(i, rng, keys)
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


def write_config(root: Path, extra: str = "", routes: str = ROUTES, database: str = "pipeline.db") -> Path:
    """A benchmark's pipeline.toml; its dashboard gets a free port (supervisord starts one)."""
    path = root / "pipeline.toml"
    if "[dashboard]" not in extra:
        extra += f'[dashboard]\nlisten = "127.0.0.1:{free_port()}"\n'
    path.write_text('[paths]\nhot_folder = "hot"\nstore = "store"\nfailed = "failed"\n'
                    f'error_log = "errors"\ndatabase = "{database}"\n' + extra + routes)
    return path


class PostgresSchema:
    """A fresh schema in the PostgreSQL database at ``url`` for one run, dropped afterwards;
    ``url`` then points the pipeline at it (libpq's search_path option)."""

    def __init__(self, base: str):
        import psycopg2
        self.name = f"bench_{uuid.uuid4().hex[:10]}"
        self.admin = psycopg2.connect(base)
        self.admin.autocommit = True
        self.admin.cursor().execute(f"CREATE SCHEMA {self.name}")
        separator = "&" if "?" in base else "?"
        self.url = f"{base}{separator}options={quote(f'-csearch_path={self.name}')}&application_name={self.name}"

    def drop(self) -> None:
        with self.admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND application_name = %s", (self.name,))
            cur.execute(f"DROP SCHEMA {self.name} CASCADE")
        self.admin.close()
