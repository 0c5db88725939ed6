"""``bin/dashboard``: the web dashboard and /metrics (docs/design.md#operating-it), served by waitress.

Listens on ``dashboard.listen`` (loopback by default: put a reverse proxy with TLS in front to
reach it from elsewhere). The server runs in a thread; the main thread beats the heartbeat and
waits for a stop, so SIGTERM only sets the flag and the server is closed from here.
"""

from __future__ import annotations

import logging
import math
import threading

import waitress

from . import cli
from .web.app import create_app
from .program import Program

log = logging.getLogger(__name__)

THREADS = 4          # concurrent requests; each page is a few short reads


class Dashboard(Program):
    def __init__(self, ctx: cli.Context):
        self.config, self.db, self.stopper = ctx.config, ctx.db, ctx.stopper
        self.server = None

    def start(self) -> None:
        app = create_app(self.config, self.db)
        host, port = self.config.dashboard.listen
        try:
            self.server = waitress.create_server(app, host=host, port=port, threads=THREADS,
                                                 ident="hotfolder-dashboard", clear_untrusted_proxy_headers=True)
        except OSError as e:
            raise cli.ToolError(cli.EXIT_ERROR, f"cannot listen on {host}:{port} (dashboard.listen): "
                                                f"{e.strerror}") from None
        log.info("dashboard on http://%s:%d/ (actions %s)", host, port,
                 "on" if self.config.dashboard.actions else "off")
        threading.Thread(target=self.server.run, name="waitress", daemon=True).start()
        threading.Thread(target=app.extensions["hotfolder_warm_up"], name="warm-up", daemon=True).start()

    def configure(self, config) -> None:
        """A new app from the reloaded configuration, swapped in whole: each request is answered by
        the old app or the new. The address stays (dashboard.listen needs a restart); pages opened
        before hold the old form token, so an action sent from one is asked again."""
        app = create_app(config, self.db)           # ConfigError (actions without a password): no change
        if self.server is not None:
            self.server.application = app
        self.config = config

    def step(self, now: float) -> float:
        return math.inf             # the server's threads do the work; this one beats and waits

    def finish(self) -> None:
        if self.server is not None:
            self.server.close()


def main(argv: list[str] | None = None) -> int:
    return cli.serve("dashboard", "Serve the web dashboard and Prometheus metrics.", Dashboard, argv, once=False)


if __name__ == "__main__":
    raise SystemExit(main())
