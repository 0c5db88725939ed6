"""What every entry point shares: arguments, logging, configuration, database, signals, exit codes.

Exit codes (supervisord's ``exitcodes=0`` treats the others as unexpected; a program that fails at
start is retried ``startretries`` times and then left FATAL instead of restarting in a loop):

==  =====================================================================
0   done (``--once`` finished, or a graceful stop)
1   an unexpected error (a bug: the traceback is in the log)
2   wrong command-line arguments
69  the database is unusable (missing, corrupt, on a network filesystem; deleted or replaced under
    the running program; with ``--once`` or for an operator's tool, its server unreachable or
    refusing the connection, its disk full, read-only or failing)
78  the configuration is invalid (the message names the key), and nothing else
==  =====================================================================

A long-running program does not exit when its database cannot be used at start for a reason that
may pass (a server not answering yet: after a power cut the file server may boot before the
database host; a password being changed; a lock): it says why in one line and waits for it, as it
does while running, so supervisord never gives it up.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from . import command, files, heartbeat, reload, retry, separation, store
from . import config as config_module
from .config import Config, ConfigError
from .convert import escape_control_characters

if TYPE_CHECKING:
    # Imported by the steering commands' functions below when they run, not here: the scanner and
    # the watcher start through this module and never steer.
    from . import steering

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_DATABASE = 69
EXIT_CONFIG = 78

START_FIRST_PAUSE = 0.5     # seconds before a program tries its database again at start; doubling
START_LONGEST_PAUSE = 30.0

log = logging.getLogger(__name__)


def _utc(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class _Formatter(logging.Formatter):
    """``time level program message``, time in UTC with milliseconds, and ``job=N`` at the end of
    a line about a job (``extra={"job": id, "file": path}``)."""

    def formatMessage(self, record):
        # One line per event, and nothing a terminal acts on, even when a message quotes a file
        # name with a newline, an ESC sequence or a BEL in it: each control character is written
        # as its escape (\n, \x1b, \x85, \u2028); other unicode stays as it is.
        record.message = escape_control_characters(record.message)
        line = super().formatMessage(record)
        job = getattr(record, "job", None)
        return line if job is None else f"{line} job={job}"

    def formatTime(self, record, datefmt=None):
        return _utc(record)


class _JsonFormatter(logging.Formatter):
    """One JSON object per line, for Loki, Elasticsearch and the like: time, level, program, host,
    pid, message, and job and file when the line is about a job. ASCII only: every control
    character and every non-ASCII one is a JSON escape, so no line splits or acts on a terminal."""

    def __init__(self, program: str):
        super().__init__()
        self.program, self.host = program, socket.gethostname()

    def format(self, record):
        line = {"time": _utc(record), "level": record.levelname, "program": self.program, "host": self.host,
                "pid": record.process, "message": record.getMessage()}
        for key in ("job", "file"):
            if getattr(record, key, None) is not None:
                line[key] = getattr(record, key)
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line)


def setup_logging(program: str, level: int = logging.INFO, format: str = "text") -> None:
    """One line per event to stderr; supervisord writes and rotates the files. ``format`` is
    ``[logging] format``: set again once the configuration is read."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter(program) if format == "json" else
                         _Formatter(f"%(asctime)s %(levelname)s {program}[%(process)d] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("watchdog").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)


class Stopper:
    """Signal handlers only set a flag; the loops act on it, and log it.

    First SIGTERM/SIGINT: finish or release the current batch, then exit 0.
    Second: exit at once.
    SIGHUP (a long-running program's, ``install(reload=True)``): ``reload_requested``; the loop
    reads the configuration again between two steps, once however many came meanwhile.
    """

    def __init__(self):
        self._event = threading.Event()
        self.reason = "stop requested"
        self.reload_requested = False

    def install(self, reload: bool = False) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)
        if reload:
            signal.signal(signal.SIGHUP, self._handle_hup)

    def _handle_hup(self, signum, frame) -> None:
        # Only an assignment: a handler that took a lock could wait for the code it interrupted.
        self.reload_requested = True

    def _handle(self, signum, frame) -> None:
        if self._event.is_set():
            os._exit(EXIT_ERROR)
        self.reason = f"{signal.Signals(signum).name} received"
        self._event.set()

    def request(self) -> None:
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; returns True at once when a stop is requested."""
        return self._event.wait(max(seconds, 0))


@dataclass
class Context:
    """What a program is built from."""
    name: str            # the program instance: scanner, router_00, ...
    actor: str           # name@host:pid, as written in the audit trail
    config: Config
    db: store.Engine
    stopper: Stopper
    args: argparse.Namespace


def parser(program: str, description: str, once: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=command(program), description=description)
    p.add_argument("--config", metavar="FILE",
                   help="configuration file (default: $PIPELINE_CONFIG, else ./pipeline.toml, else built-in defaults)")
    if once:
        p.add_argument("--once", action="store_true", help="do the work that is there now, then exit")
    return p


def load_config(path: str | None) -> Config:
    cfg = config_module.load(path)
    store.check_location(cfg.paths.database)
    for problem in separation.problems(cfg):
        raise ConfigError(problem)
    if why := files.unstable_inodes(cfg.paths.hot_folder):
        raise ConfigError(f"[paths] hot_folder: {why}")
    return cfg


def unusable(error: store.DatabaseUnusable) -> str:
    """The one line saying why the database cannot be used: a server that is unreachable or that
    refused the connection says so first (its reason follows), anything else is "unusable"."""
    server = error.reason in ("unreachable", "refused")
    return f"{store.SAYS[error.reason] if server else 'database unusable'}: {error}"


def connect_when_ready(location, stopper: Stopper) -> store.Engine | None:
    """The database of a long-running program, waited for while it cannot be used for a reason
    that may pass (``DatabaseUnusable.reason``): one line says why, once, and again only if the
    reason changes; the pause between tries doubles up to START_LONGEST_PAUSE. None when a stop
    came first. Anything else (a corrupt file) raises DatabaseUnusable at once."""
    said, waited, failures = None, time.monotonic(), 0
    while True:
        try:
            db = store.connect(location)
        except store.DatabaseUnusable as e:
            if e.reason is None:
                raise
            if str(e) != said:
                said = str(e)
                log.warning("%s; waiting for it before starting (tried again after %gs, then less and "
                            "less often, every %gs at most)", unusable(e), START_FIRST_PAUSE, START_LONGEST_PAUSE)
            if stopper.wait(retry.delay(failures, START_LONGEST_PAUSE, START_FIRST_PAUSE)):
                return None
            failures += 1
            continue
        if said is not None:
            log.info("database usable after %.0fs; starting", time.monotonic() - waited)
        return db


class ToolError(Exception):
    """An operator's tool cannot start; str() is the one line for stderr, ``code`` the exit status."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def open_existing(config_path: str | None, paths_only: bool = False) -> tuple[Config, store.Engine]:
    """The configuration and the existing database, for the tools that read or mend it (bin/status,
    bin/requeue): a missing database is an error here, never created. ``paths_only``: see
    ``config.load``."""
    try:
        cfg = config_module.load(config_path, paths_only=True) if paths_only else load_config(config_path)
        return cfg, store.connect(cfg.paths.database, create=False)
    except ConfigError as e:
        raise ToolError(EXIT_CONFIG, f"configuration error: {e}") from None
    except store.DatabaseUnusable as e:
        raise ToolError(EXIT_DATABASE, unusable(e)) from None


def open_or_exit(config_path: str | None) -> tuple[Config, store.Engine]:
    """``open_existing`` for a tool whose only answer to a ToolError is its line on stderr and its
    exit code (bin/requeue, bin/backup)."""
    try:
        return open_existing(config_path)
    except ToolError as e:
        print(e, file=sys.stderr)
        raise SystemExit(e.code) from None


def run_program(program: str, argp: argparse.ArgumentParser, main: Callable[[Context], int | None],
                argv: list[str] | None = None, waits: bool = False) -> int:
    """Parse arguments, load the config, open the database, install signals, call ``main``; its
    return value (None for EXIT_OK) is the exit status. ``waits``: a long-running program, which
    waits for a database it cannot use yet (``connect_when_ready``), unless run ``--once``."""
    args = argp.parse_args(argv)
    name = os.environ.get("SUPERVISOR_PROCESS_NAME") or program
    setup_logging(name)
    stopper = Stopper()
    stopper.install(reload=waits)   # before the database: a stop must end a wait for it
    try:
        cfg = load_config(args.config)
        if cfg.logging.format != "text":
            setup_logging(name, format=cfg.logging.format)
        if waits and not getattr(args, "once", False):
            db = connect_when_ready(cfg.paths.database, stopper)
            if db is None:
                log.info("%s stopped before its database could be used", name)
                return EXIT_OK
        else:
            db = store.connect(cfg.paths.database)
    except ConfigError as e:
        log.error("configuration error: %s", e)
        return EXIT_CONFIG
    except store.DatabaseUnusable as e:
        log.error("%s", unusable(e))
        return EXIT_DATABASE
    try:
        actor = f"{name}@{socket.gethostname()}:{os.getpid()}"  # router_00@host:pid, told apart across hosts
        code = main(Context(name=name, actor=actor, config=cfg, db=db, stopper=stopper,
                            args=args)) or EXIT_OK
        heartbeat.retire(db, name)
    except ConfigError as e:            # a check that needs more than the file (an environment variable)
        log.error("configuration error: %s", e)
        return EXIT_CONFIG
    except store.DatabaseUnusable as e:
        log.error("%s", unusable(e))
        return EXIT_DATABASE
    except ToolError as e:              # the program cannot work for a reason it names in one line
        log.error("%s", e)
        return e.code
    except Exception:
        log.exception("%s stopped by an unexpected error", name)
        return EXIT_ERROR
    finally:
        db.close()
    log.info("%s stopped", name)
    return code


def serve(program: str, description: str, build: Callable[[Context], object], argv: list[str] | None = None,
          once: bool = True) -> int:
    """The whole main() of a long-running program: ``build`` makes it (a ``program.Program``) from
    the context, and its loop runs until stopped, or with ``--once`` until its work is done."""
    def start(ctx: Context) -> None:
        once_only = getattr(ctx.args, "once", False)
        file = str(config_module.find_config_file(ctx.args.config) or "built-in defaults")
        beat = heartbeat.Heartbeat(ctx.db, ctx.name, once=once_only,
                                   max_clock_skew=ctx.config.database.max_clock_skew,
                                   config=reload.fingerprint(ctx.config), config_file=file)
        program = build(ctx)
        program.reloader = reload.Reloader(lambda: load_config(ctx.args.config), file, beat)
        program.run(once=once_only, heartbeat=beat)

    return run_program(program, parser(program, description, once), start, argv, waits=True)


# -- the steering commands (bin/pause, bin/resume, bin/hold, bin/release, bin/dismiss, bin/redeliver) --

class _OneLineParser(argparse.ArgumentParser):
    """Arguments refused in one line with exit 64 (EX_USAGE), nothing changed."""

    def error(self, message: str):
        from . import steering
        self.exit(steering.EX_USAGE, f"{self.prog}: {message}\n")


def steering_parser(program: str, description: str) -> argparse.ArgumentParser:
    p = _OneLineParser(prog=command(program), description=description)
    p.add_argument("--config", metavar="FILE",
                   help="configuration file (default: $PIPELINE_CONFIG, else ./pipeline.toml, else built-in defaults)")
    p.add_argument("--actor", metavar="NAME", help="who acts, for the audit trail (default: login@host)")
    return p


def steer(program: str, args: argparse.Namespace, act: Callable[[Config, steering.Steering], int | None]) -> int:
    """Open the configuration and database, run ``act`` as the person acting; an action refused is
    one line on stderr and its exit status (64 usage, 65 data), with nothing changed."""
    from . import steering
    setup_logging(program)
    config, db = open_or_exit(args.config)
    try:
        return act(config, steering.Steering(db, steering.actor(args.actor))) or EXIT_OK
    except steering.Refused as e:
        print(f"{command(program)}: {e}", file=sys.stderr)
        return e.code
    finally:
        db.close()


def add_pause_target(argp: argparse.ArgumentParser, verb: str) -> None:
    """The one target of a pause or resume (none: list, for bin/pause)."""
    target = argp.add_mutually_exclusive_group()
    target.add_argument("--destination", metavar="NAME", help=f"{verb} the copies to this [[route]] name")
    target.add_argument("--client", metavar="C", help=f"{verb} this client folder's jobs (case-insensitive)")
    target.add_argument("--routing", action="store_true", help=f"{verb} all routing (detection goes on)")
    target.add_argument("--notify", action="store_true", help=f"{verb} notification (no attempt is made or spent)")


def pause_target(args: argparse.Namespace) -> tuple[str, str] | None:
    """(kind, name) of the target given, or None."""
    if args.destination is not None:
        return "destination", args.destination
    if args.client is not None:
        return "client", args.client
    if args.routing:
        return "routing", ""
    if args.notify:
        return "notification", ""
    return None


def print_moved(chosen, verb: str, to_state, dry_run: bool) -> None:
    """The lines of a hold, release or dismissal: each job, then how many (a dry run says so)."""
    for job in chosen:
        print(f"{job.label}: {job.state} -> {to_state(job)}" + (" (dry run)" if dry_run else ""))
    print(f"{'would have ' if dry_run else ''}{verb} {len(chosen)} job(s)"
          + (" (dry run: nothing changed)" if dry_run else ""))
