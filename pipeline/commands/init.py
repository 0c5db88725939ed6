"""``hotfolder init DIR``: a working site in DIR, made from the files the repository runs on.

DIR gets ``pipeline.toml`` (the example configuration with every path inside DIR, relative so the
site can move, and no mail server until one is set), ``supervisord.conf`` (the repository's, each
program run through this installation's ``hotfolder``), a systemd unit, and the hot folder. An
existing site is never overwritten without ``--force``.
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
import re
import shlex
import sys
from pathlib import Path

from .. import cli, command
from ..files import Folders, Modes, write_atomic

SITE_FILES = ("pipeline.toml", "supervisord.conf", "hotfolder-pipeline.service")

_UNIT = """\
# systemd unit for the pipeline in {site}. Install it with:
#   sudo cp {site}/hotfolder-pipeline.service /etc/systemd/system/
#   sudo systemctl daemon-reload && sudo systemctl enable --now hotfolder-pipeline
[Unit]
Description=JSON hot-folder pipeline (supervisord)
After=network-online.target remote-fs.target
Wants=network-online.target

[Service]
Type=simple
WorkingDirectory={site}
# secrets: SMTP_PASSWORD=..., PIPELINE_API_TOKEN=..., DASHBOARD_PASSWORD=... (a file of mode 0600)
EnvironmentFile=-/etc/hotfolder-pipeline/secrets.env
ExecStart={hotfolder} start --site {site_arg}
# A reload checks the file first (a configuration with an error changes nothing), then each
# program reads it again without a restart.
ExecReload={hotfolder} reload --site {site_arg}
KillSignal=SIGTERM
TimeoutStopSec=90
Restart=on-failure

[Install]
WantedBy=multi-user.target
"""


def hotfolder_command() -> str:
    """This installation's ``hotfolder``: the console script beside its Python when pip made one,
    else the same command through ``python -m pipeline``."""
    script = Path(sys.executable).with_name("hotfolder")
    if script.is_file() and os.access(script, os.X_OK):
        return shlex.quote(str(script))
    return f"{shlex.quote(sys.executable)} -m pipeline"


def _packaged(name: str) -> str:
    return importlib.resources.files(__package__).joinpath("site", name).read_text(encoding="utf-8")


def site_config() -> str:
    """The example configuration with its folders inside the site and no mail server yet."""
    text = _packaged("pipeline.example.toml")
    text = text.replace('"/data/PRODUCTION/', '"data/').replace('"/data/', '"data/')
    text = text.replace('"/var/lib/hotfolder-pipeline/pipeline.db"', '"var/pipeline.db"')
    text = re.sub(r'^host(\s*)= "smtp\.example\.com"', r'host\1= ""    # your SMTP server, to send reports and alerts',
                  text, count=1, flags=re.M)
    return text


def site_supervisord(hotfolder: str) -> str:
    """The repository's supervisord.conf, each program run as ``hotfolder PROGRAM``."""
    text = _packaged("supervisord.conf")
    body = text[text.index("[unix_http_server]"):]           # the repository's own header says bin/start
    header = ("; Runs the pipeline's programs for this site; `hotfolder start --site .` starts it.\n"
              f"; {command('status')} shows the pipeline, and supervisorctl -c supervisord.conf the programs.\n\n")
    return header + body.replace("%(here)s/bin/", f"{hotfolder} ")


def site_unit(site: Path, hotfolder: str) -> str:
    return _UNIT.format(site=site, site_arg=shlex.quote(str(site)), hotfolder=hotfolder)


def main(argv: list[str] | None = None) -> int:
    argp = argparse.ArgumentParser(prog=command("init"), description="Make a working site in DIR: pipeline.toml, "
                                   "supervisord.conf and a systemd unit, with every folder inside DIR.")
    argp.add_argument("dir", metavar="DIR", help="the site's folder (created when missing)")
    argp.add_argument("--force", action="store_true", help="overwrite the files of an existing site")
    args = argp.parse_args(argv)
    site = Path(os.path.abspath(args.dir))
    there = [name for name in SITE_FILES if os.path.lexists(site / name)]
    if there and not args.force:
        print(f"{command('init')}: {site} already holds a site ({', '.join(there)}); "
              "--force overwrites it", file=sys.stderr)
        return cli.EXIT_USAGE
    hotfolder = hotfolder_command()
    folders = Folders(Modes(file=0o644, dir=0o755))     # the configuration: readable, written by its owner
    try:
        for folder in (site / "var" / "log", site / "data" / "JSON"):
            folders.ensure(folder)
        for name, text in (("pipeline.toml", site_config()), ("supervisord.conf", site_supervisord(hotfolder)),
                           ("hotfolder-pipeline.service", site_unit(site, hotfolder))):
            write_atomic(site / name, text.encode("utf-8"), folders)
        folders.sync()
    except OSError as e:
        print(f"{command('init')}: cannot write the site in {site}: {e.strerror or e}", file=sys.stderr)
        return cli.EXIT_ERROR
    print(f"site ready in {site}:\n"
          f"  pipeline.toml       the configuration: routing rules, API, reports (check it: {command('check-config')})\n"
          f"  supervisord.conf    the programs\n"
          f"  hotfolder-pipeline.service   a systemd unit\n"
          f"start it with: cd {shlex.quote(str(site))} && {command('start')}\n"
          f"then drop a job file into {site / 'data' / 'JSON'}/<CLIENT>/")
    return cli.EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
