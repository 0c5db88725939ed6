"""A running program takes a changed configuration on SIGHUP (docs/design.md#changing-the-configuration-live).

The signal handler only sets a flag (``cli.Stopper``); between two steps the program's loop calls
``Reloader.reload``, which reads and validates the whole file the way a start does, keeps the keys
that cannot change in a running program (``RESTART_ONLY``: logged once as needing a restart), and
hands the result to the program's ``configure``, which swaps its configuration and everything
derived from it at once. Any error, in the file or in what the program derives from it, changes
nothing: one ERROR line naming the key, and the heartbeat records the file as invalid until a
program of this host loads it valid again (``bin/status`` and the dashboard warn meanwhile).

``fingerprint`` names the configuration a program runs, in every heartbeat: a hash of the
effective configuration (the validated values, defaults filled in, paths resolved, each schema
file's content), so key order, comments, spacing and a default written out do not change it,
and any value that changes what a program does does.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any, Callable

from .config import Config, ConfigError
from .store import DatabaseUnusable

log = logging.getLogger(__name__)

# Keys a running program cannot take: what it has opened, bound or started from them at start.
# None: every key of the section.
RESTART_ONLY: dict[str, tuple[str, ...] | None] = {
    "paths": None,                              # the folders it watches and the database it has open
    "dashboard": ("listen",),                   # the socket is bound
    "detect": ("observer", "poll_interval"),    # the watcher's observer runs
    "api": ("concurrency",),                    # the notifier's threads and calls in flight
    "logging": ("format",),                     # the handler is attached at start
}


def keep_restart_only(running: Config, new: Config) -> tuple[Config, list[str]]:
    """``new`` with the restart-only values of ``running``, and those that differ, as "[section] key"."""
    kept, sections = [], {}
    for section, keys in RESTART_ONLY.items():
        old_values, new_values = getattr(running, section), getattr(new, section)
        names = keys or [f.name for f in dataclasses.fields(old_values)]
        changed = [k for k in names if getattr(old_values, k) != getattr(new_values, k)]
        if changed:
            kept += [f"[{section}] {k}" for k in changed]
            sections[section] = dataclasses.replace(new_values, **{k: getattr(old_values, k) for k in changed})
    return dataclasses.replace(new, **sections), kept


def fingerprint(config: Config) -> str:
    """12 hex digits naming the effective configuration (see the module's docstring)."""
    text = json.dumps(_canonical(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _canonical(value: Any) -> Any:
    """``value`` as plain JSON: compiled rules by what they were compiled from, a schema by its
    file's content; what a comparison of the objects ignores (a validator, the file's own path)
    is left out here too."""
    if dataclasses.is_dataclass(value):
        out = {f.name: _canonical(getattr(value, f.name)) for f in dataclasses.fields(value)
               if f.compare and not callable(getattr(value, f.name))}
        if type(value).__name__ == "Schema":
            out["content"] = _file_hash(value.path)
        return out
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(_canonical(v) for v in value)
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, re.Pattern):
        return value.pattern
    if isinstance(value, (Path, dt.time)):
        return str(value)
    return value


def _file_hash(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as e:
        return f"unreadable: {e.strerror}"


class Reloader:
    """Reads the configuration again for one program. ``load`` reads and validates the file as the
    program's start did (``cli.load_config``); ``file`` names it in the log and the database;
    ``heartbeat`` (when there is one) carries the outcome into the database."""

    def __init__(self, load: Callable[[], Config], file: str, heartbeat=None):
        self.load, self.file, self.heartbeat = load, file, heartbeat

    def reload(self, running: Config, configure: Callable[[Config], None]) -> Config:
        """The configuration the program runs from now on: the new one once ``configure`` took
        it, else ``running`` unchanged (``configure`` raises ConfigError before it swaps anything)."""
        try:
            new, kept = keep_restart_only(running, self.load())
            configure(new)
        except (ConfigError, DatabaseUnusable, OSError) as e:
            # DatabaseUnusable: the file's database is somewhere the engine cannot work (a network
            # filesystem); OSError: a place the checks look at cannot be read. Neither stops a
            # program that runs on what it has.
            problem = str(e) if isinstance(e, ConfigError) else f"{self.file}: {e}"
            log.error("configuration not reloaded, running on as before: %s", problem)
            if self.heartbeat:
                self.heartbeat.config_invalid(self.file, problem)
            return running
        if kept:
            log.warning("configuration reloaded except %s: changed in %s, but needs a restart; kept as it was",
                        ", ".join(kept), self.file)
        new_print = fingerprint(new)
        log.info("configuration reloaded from %s (fingerprint %s%s)", self.file, new_print,
                 ", unchanged" if new_print == fingerprint(running) else "")
        if self.heartbeat:
            self.heartbeat.config_loaded(new_print, self.file)
        return new
