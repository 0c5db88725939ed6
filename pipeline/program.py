"""The one loop of the long-running programs (scanner, watcher, router, notifier, reporter).

A program says what one step of its work is (``step(now)``, returning how many seconds until it
wants to run again: 0 for at once), and this loop does the rest, the same for every program:

- heartbeats, also while it sleeps, so that a long wait never looks like a silent program;
- ``--once``: steps until a step has nothing more to do now (it asks to wait), then returns;
- stopping: a signal only sets the stopper's flag; the loop sees it between steps, logs it once,
  and lets the program give back what it holds (``drain()``);
- reloading: SIGHUP only sets the stopper's ``reload_requested``, and so does a heartbeat that
  finds a newer reload request of bin/reload in the database (from any host); before the next step
  (or within a heartbeat of an idle wait) the configuration is read again (``reload.Reloader``)
  and, when valid, handed to ``configure`` (docs/design.md#changing-the-configuration-live);
- the one policy for a transient database error (locked past the busy timeout, disk full,
  read-only, failing, unreachable, refusing the connection): logged once while it lasts, and again
  when the database's own reason changes (``store.Trouble``), the step tried again after a pause
  that doubles from 0.1 s to 5 s. With ``--once`` only a lock is waited out; the rest exits 69, as
  there is no later to wait for. (A database that cannot be used at start is waited for before the
  program is built: ``cli.connect_when_ready``.)

Anything else a step raises is a defect: it stops the program, whose traceback supervisord logs.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from . import heartbeat as heartbeat_module
from . import retry, store
from .config import Config
from .heartbeat import Heartbeat
from .reload import Reloader

log = logging.getLogger(__name__)

FIRST_PAUSE = 0.1       # seconds after a first transient database error; doubles each time
LONGEST_PAUSE = 5.0


class Program:
    """A long-running program: subclasses set ``db`` and ``stopper`` and write ``step``."""

    db: store.Engine
    stopper: object                     # cli.Stopper
    config: Config
    reloader: Reloader | None = None    # set by cli.serve: what SIGHUP reads
    clock: Callable[[], float] = staticmethod(time.time)      # what step() is given as now
    injected_sleep: Callable[[float], None] | None = None       # tests: a sleep that only moves their clock
    once = False
    wakes_on_work = False       # an idle wait ends early when the engine says work has come

    def step(self, now: float) -> float:
        """Do what is due; return the seconds until the next step is wanted (0: at once)."""
        raise NotImplementedError

    def start(self) -> None:
        """Before the first step (set-up that needs no database retry)."""

    def drain(self) -> bool:
        """After a stop: give back or finish what is held; True when done (tried again if not)."""
        return True

    def finish(self) -> None:
        """Last, whatever happened: release threads and other resources."""

    def configure(self, config: Config) -> None:
        """Take a reloaded configuration, between two steps. A program that derives objects from
        it builds them all first and then swaps them in with the configuration, so that it runs
        either all of the old or all of the new; raising ConfigError before the swap keeps the old."""
        self.config = config

    def sleep(self, seconds: float, heartbeat: Heartbeat | None) -> None:
        """Wait up to ``seconds`` (``math.inf``: until stopped), beating between heartbeat-sized
        slices; returns early on a stop, or when the engine says work may have come."""
        if self.injected_sleep:
            self.injected_sleep(seconds)
        else:
            self._idle(seconds, heartbeat)

    def _idle(self, seconds: float, heartbeat: Heartbeat | None) -> None:
        """The real wait. It ends when ``seconds`` have passed on the monotonic clock or on the
        program's own: a wall clock set forward (the reporter's day changed) is seen within a
        heartbeat, one set back never lengthens the wait."""
        if self.wakes_on_work:      # woken on new work, so only the fallback poll is timed
            seconds = max(seconds, self.db.IDLE_POLL)
        deadline, by_clock = time.monotonic() + seconds, self.clock() + seconds
        while not self.stopper.requested and not self._reload_due():
            left = min(deadline - time.monotonic(), by_clock - self.clock())
            if left <= 0:
                return
            self._beat(heartbeat)
            if self._reload_due():
                return
            if self.db.wait_for_work(self.stopper, min(heartbeat_module.INTERVAL, left), self.wakes_on_work):
                return

    # -- the loop ---------------------------------------------------------------------------------

    def run(self, once: bool = False, heartbeat: Heartbeat | None = None) -> None:
        """Step until stopped; with ``once``, until a step has nothing more to do now."""
        self.once = once
        self.start()
        try:
            self._steps(heartbeat)
            if self.stopper.requested:
                log.info("%s: finishing the current work, then stopping (again to stop at once)",
                         self.stopper.reason)
            self._with_retries(self.drain, heartbeat)
        finally:
            self.finish()

    def _beat(self, heartbeat: Heartbeat | None) -> None:
        """Beat; a reload request of bin/reload that the beat found (one from another host, whose
        HUP never reaches this one) asks for a reload as a SIGHUP does."""
        if heartbeat:
            heartbeat.beat()
            if heartbeat.reload_asked and self.reloader is not None:
                heartbeat.reload_asked = False
                self.stopper.reload_requested = True

    def _reload_due(self) -> bool:
        return self.reloader is not None and getattr(self.stopper, "reload_requested", False)

    def _reload(self, heartbeat: Heartbeat | None) -> None:
        """Read the configuration again; HUPs that come meanwhile ask for one more reload."""
        self.stopper.reload_requested = False
        config = self.reloader.reload(self.config, self.configure)
        if heartbeat:
            heartbeat.max_clock_skew = config.database.max_clock_skew

    def _steps(self, heartbeat: Heartbeat | None) -> None:
        while not self.stopper.requested:
            if self._reload_due():
                self._reload(heartbeat)
            self._beat(heartbeat)
            wait = self._with_retries(lambda: self.step(self.clock()), heartbeat, until_done=False)
            if wait is None:
                continue                # a transient error: the pause is over, step again
            if self.once and wait > 0:
                return
            if wait > 0:
                self.sleep(wait, heartbeat)

    def _with_retries(self, call: Callable, heartbeat: Heartbeat | None, until_done: bool = True):
        """``call()`` under the transient-error policy. ``until_done``: call again until it returns
        a true value (the drain); else return None after one transient error and its pause."""
        failures = 0
        while True:
            try:
                result = call()
            except Exception as e:
                pause = retry.delay(failures, LONGEST_PAUSE, FIRST_PAUSE)
                if not store.retry_later(self.db, e, f"trying again in {pause:.1f}s", self.once):
                    raise
                failures += 1
                if until_done and self.stopper.requested and failures > 3:
                    log.warning("stopping without finishing: the database stayed unusable; "
                                "what this program held is taken over when its leases run out")
                    return True
                # Real time, even where tests inject the program's own sleep.
                self._idle(pause, heartbeat) if not until_done else time.sleep(pause)
                if not until_done:
                    return None
                continue
            if result or not until_done:
                return result

