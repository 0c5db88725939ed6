"""Several hosts on one machine, for the tests of several hosts sharing one hot folder (docs/design.md#several-hosts).

A host is a process tree in its own mount, UTS and PID namespaces (``unshare``): its own host
name, and its own ``bindfs`` view of the shared folder mounted at the same path as on every other
host. A bindfs view keeps the inode numbers but has a device number of its own, and its inotify
does not see writes made through another view: as an NFS or SMB share looks from two file
servers. (A plain bind mount would share the device number and hide the identity bug.) The
programs of every host talk TCP to one real PostgreSQL. Killing a host's first process kills
every process of its PID namespace at once: the host dies whole, mid-write if it was writing.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def unavailable() -> str | None:
    """Why hosts cannot be made here, or None."""
    if os.geteuid() != 0:
        return "separate hosts need root (mount and PID namespaces, a FUSE mount)"
    for tool in ("unshare", "bindfs"):
        if not shutil.which(tool):
            return f"{tool} is not installed (Debian: apt-get install util-linux bindfs)"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing: bindfs cannot mount"
    probe = subprocess.run(["unshare", "--mount", "--uts", "--pid", "--fork", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"namespaces refused here: {probe.stderr.strip()}"
    return None


class Host:
    """One host: ``programs`` (bin/ names, a router given as router_00 ...) run in its namespaces,
    with ``shared`` seen through its bindfs view at ``view``, and ``config`` as PIPELINE_CONFIG."""

    def __init__(self, name: str, shared: Path, view: Path, config: Path, programs: list[str], logs: Path):
        self.name, self.logs = name, logs
        launches = []
        for program in programs:
            binary, _, instance = program.partition("=")
            env = f"SUPERVISOR_PROCESS_NAME={shlex.quote(instance)} " if instance else ""
            log = shlex.quote(str(logs / f"{name}.{instance or binary}.log"))
            launches.append(f"{env}{shlex.quote(str(ROOT / 'bin' / binary))} >{log} 2>&1 &")
        script = "\n".join([
            "set -e",
            f"hostname {shlex.quote(name)}",
            f"bindfs {shlex.quote(str(shared))} {shlex.quote(str(view))}",
            f"export PIPELINE_CONFIG={shlex.quote(str(config))}",
            *launches,
            "echo started",
            "wait",
        ])
        self.proc = subprocess.Popen(["unshare", "--mount", "--uts", "--pid", "--fork", "--propagation", "private",
                                      "sh", "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        line = self.proc.stdout.readline().strip()
        if line != "started":
            self.kill()
            raise AssertionError(f"host {name} did not start: {line!r}")

    def kill(self) -> None:
        """SIGKILL the whole host: unshare's child is the namespace's first process, and with it
        the kernel kills every process of the namespace (bindfs included)."""
        children = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout.split()
        for pid in children:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.kill()
        except ProcessLookupError:
            pass
        self.proc.wait(30)

    def stop(self) -> None:
        """A clean stop: SIGTERM to every program of the host, then the host goes."""
        children = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout.split()
        for pid in children:
            grand = subprocess.run(["pgrep", "-P", pid], capture_output=True, text=True).stdout.split()
            for g in grand:
                try:
                    os.kill(int(g), signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 20
        while self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.proc.poll() is None:
            self.kill()

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.logs.glob(f"{self.name}.*.log")))


def shared_site(root: Path, database: str, clients=("RANK",), router: str = "", routes: str = ""):
    """The share the hosts see (hot/<client>, store, failed, errors, dest/Rank), the folder each
    host's bindfs view is mounted on, and hosts.toml: polling detection (no host's inotify sees
    another's writes), a 5 s lease plus ``router`` lines, the Rank route plus ``routes`` (where
    ``{view}`` stands for the view). Returns (share, view, config)."""
    share, view = root / "share", root / "view"
    for folder in (*(f"hot/{client}" for client in clients), "store", "failed", "errors", "dest/Rank"):
        (share / folder).mkdir(parents=True, exist_ok=True)
    view.mkdir()
    config = root / "hosts.toml"
    config.write_text(f'''
[paths]
hot_folder = "{view}/hot"
store = "{view}/store"
failed = "{view}/failed"
error_log = "{view}/errors"
database = "{database}"
[detect]
observer = "polling"
poll_interval = 0.2
min_file_age = 0.3
scan_interval = 2
[router]
lease = 5
{router}
[[route]]
name = "Rank"
clients = ["RANK"]
to = "{view}/dest/Rank"
{routes.replace("{view}", str(view))}
''')
    return share, view, config
