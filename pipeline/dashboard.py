"""``bin/dashboard``: the web dashboard and /metrics (SPEC §16), served by waitress.

Listens on ``dashboard.listen`` (loopback by default: put a reverse proxy with TLS in front to
reach it from elsewhere). The server runs in a thread; the main thread beats the heartbeat and
waits for a stop, so SIGTERM only sets the flag and the server is closed from here.
"""

from __future__ import annotations

import logging
import threading

import waitress

from . import activity, cli, web

log = logging.getLogger(__name__)

THREADS = 4          # concurrent requests; each page is a few short reads


def run(ctx: cli.Context) -> None:
    app = web.create_app(ctx.config, ctx.db)
    host, port = ctx.config.dashboard.listen
    try:
        server = waitress.create_server(app, host=host, port=port, threads=THREADS, ident="hotfolder-dashboard",
                                        clear_untrusted_proxy_headers=True)
    except OSError as e:
        raise cli.ToolError(cli.EXIT_ERROR, f"cannot listen on {host}:{port} (dashboard.listen): {e.strerror}") from None
    log.info("dashboard on http://%s:%d/ (actions %s)", host, port,
             "on" if ctx.config.dashboard.actions else "off")
    threading.Thread(target=server.run, name="waitress", daemon=True).start()
    heartbeat = activity.Heartbeat(ctx.db, ctx.name)
    heartbeat.beat(force=True)
    activity.sleep(ctx.stopper, float("inf"), heartbeat)
    server.close()


def main(argv: list[str] | None = None) -> int:
    argp = cli.parser("dashboard", "Serve the web dashboard and Prometheus metrics.", once=False)
    return cli.run_program("dashboard", argp, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
