"""What the programs that move the first files (scanner, watcher, router) load to start.

supervisord starts every program at once on few cores, and what each imports is CPU taken from
the scanner's startup scan and the routers' first claims (docs/design.md#operating-it). Modules that
only some paths need are imported where they are used; these tests import each program's module
in a fresh interpreter and look at what it loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT

# Needed by none of the three before their first scan or claim, whatever the configuration.
NEVER = {
    "importlib.resources": "the DDL, read only when a schema is applied",
    "tempfile": "importlib.resources's and ctypes.util's",
    "ctypes.util": "find_library runs ldconfig in a child process",
    "subprocess": "ctypes.util's",
    "pipeline.store.postgres": "the PostgreSQL engine, for a postgresql:// database only",
    "watchdog": "the polling observer (pipeline/polling.py), for detect.observer = polling only",
    "pipeline.store.models": "the peewee models, for the tools and reports",
    "jinja2": "the report's and the dashboard's templates",
    "requests": "the notifier's calls",
    "jsonschema": "[[schema]] checks, loaded by the router when a schema is configured",
    "http.client": "the notifier's and the dashboard's",
    "email": "the reporter's mail",
}
# Also not in these two, which never steer and never wait for a commit.
NOT_IN = {"scanner": {"pipeline.steering": "the steering commands'", "ctypes": "the WAL watch's"},
          "watcher": {"pipeline.steering": "the steering commands'"},
          "router": {}}


def loaded(module: str) -> set[str]:
    """The modules a fresh interpreter has after importing ``module`` from this checkout."""
    out = subprocess.run([sys.executable, "-c", f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"],
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return set(json.loads(out))


@pytest.mark.parametrize("program", sorted(NOT_IN))
def test_a_hot_program_starts_without_what_only_other_paths_need(program):
    modules = loaded(f"pipeline.{program}")
    unwanted = {**NEVER, **NOT_IN[program]}
    found = {name: why for name, why in unwanted.items() if name in modules}
    assert not found, f"pipeline.{program} imports at start: {found}"
    assert "pipeline.cli" in modules and "pipeline.jobs" in modules     # it did load what it runs on
