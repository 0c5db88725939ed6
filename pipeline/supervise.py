"""supervisord, starting its programs at once: what ``bin/start`` and ``hotfolder start`` run.

supervisord 4.3.0 spawns its programs at the end of its first pass through its event loop, after a
poll that waits up to 1 s for an event that does not come: every start of the pipeline began with
a second of nothing. Supervisor's own fix (pull request 1700, on its main branch after 4.3.0)
makes that first poll not wait; this applies the same change until a release has it, and is
harmless after. Everything else is supervisord itself, with its own options.
"""

from __future__ import annotations

from supervisor import poller, supervisord


class _FirstPollAtOnce(poller.Poller):
    _polled = False

    def poll(self, timeout):
        if not self._polled:
            self._polled = True
            timeout = 0
        return super().poll(timeout)


def main(argv: list[str] | None = None) -> None:
    """supervisord's own command line (``argv``, else the process's arguments)."""
    poller.Poller = _FirstPollAtOnce    # supervisor's options build their poller from this name
    supervisord.main(args=argv)


if __name__ == "__main__":
    main()
