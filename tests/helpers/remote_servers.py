"""Real servers for the remote destinations, on 127.0.0.1, started and stopped by the tests:
OpenSSH's sshd, Samba's smbd, and moto's S3 server, an S3 emulator (not AWS: none of AWS's own
runs here). Each keeps its configuration, keys and data in the test's temporary folder.

A server whose program is not installed skips its tests with the reason, unless
``PIPELINE_TEST_REMOTE_REQUIRED=1`` (CI, .ci/run) makes that a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from helpers.smtp_server import free_port

REQUIRED = os.environ.get("PIPELINE_TEST_REMOTE_REQUIRED") == "1"
SSHD, SFTP_SERVER = "/usr/sbin/sshd", "/usr/lib/openssh/sftp-server"
SMBD, SMBPASSWD = shutil.which("smbd") or "/usr/sbin/smbd", shutil.which("smbpasswd")
SMB_USER, SMB_PASSWORD = "pipelinetest", "pipeline-smb-test"


def absent(what: str) -> None:
    """Skip (fail in CI) because ``what`` is missing here."""
    message = f"{what} is not installed here"
    if REQUIRED:
        pytest.fail(message + " (PIPELINE_TEST_REMOTE_REQUIRED=1)")
    pytest.skip(message)


def _listening(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on 127.0.0.1:{port}") from None
            time.sleep(0.05)


def remote_table(url: str, connections: int, **keys) -> str:
    """A ``[[remote]]`` table serving ``url``."""
    lines = [f'url = "{url}"'] + [f'{key} = "{value}"' for key, value in keys.items()]
    return "\n[[remote]]\n" + "\n".join(lines) + f"\nmax_connections = {connections}\n"


class _Daemon:
    """A server process of its own process group, so that stopping it stops its children too."""
    proc: subprocess.Popen | None = None
    port: int

    def _spawn(self, argv: list[str], log: Path) -> None:
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        _listening(self.port)

    def stop(self) -> None:
        """Kill the server and every process it forked (sshd's sessions make sessions of their
        own): the connections open to it break, as when its host goes down."""
        if self.proc is None:
            return
        for pid in [self.proc.pid] + _descendants(self.proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)
        self.proc = None


def _descendants(pid: int) -> list[int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


class Sshd(_Daemon):
    """OpenSSH's sshd with its own config and host key; logs in the current user with a generated key."""

    def __init__(self, root: Path, log_requests: bool = True):
        if not os.path.exists(SSHD) or not os.path.exists(SFTP_SERVER) or not shutil.which("ssh-keygen"):
            absent("OpenSSH's sshd (Debian's openssh-server)")
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.user = os.environ.get("USER") or "root"
        self.host_key, self.user_key, self.other_key = root / "host_key", root / "user_key", root / "other_key"
        for key in (self.host_key, self.user_key, self.other_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        (root / "authorized_keys").write_text((root / "user_key.pub").read_text())
        os.chmod(root / "authorized_keys", 0o600)
        host_public = " ".join((root / "host_key.pub").read_text().split()[:2])
        self.known_hosts = root / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_public}\n")
        (root / "sshd_config").write_text(f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {self.host_key}
AuthorizedKeysFile {root}/authorized_keys
PidFile {root}/sshd.pid
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin prohibit-password
Subsystem sftp {f"{root}/sftp-server" if log_requests else "internal-sftp"}
""")
        # OpenSSH's sftp-server, logging each request (open, fsync, rename) to a file the tests read.
        (root / "sftp-server").write_text(f"#!/bin/sh\nexec {SFTP_SERVER} -e -l VERBOSE 2>>{root}/sftp.log\n")
        os.chmod(root / "sftp-server", 0o755)
        os.makedirs("/run/sshd", exist_ok=True)      # its privilege separation folder
        self.start()

    def start(self) -> None:
        self._spawn([SSHD, "-D", "-e", "-f", str(self.root / "sshd_config")], self.root / "sshd.log")

    def url(self, path: Path | str) -> str:
        return f"sftp://{self.user}@127.0.0.1:{self.port}{path}"

    def remote(self, key: Path | None = None, known_hosts: Path | None = None, connections: int = 4) -> str:
        return remote_table(f"sftp://{self.user}@127.0.0.1:{self.port}", connections,
                            key_file=key or self.user_key, known_hosts=known_hosts or self.known_hosts)


class Smbd(_Daemon):
    """Samba's smbd with its own smb.conf and state, one share on ``share``, one user (smbpasswd)."""

    def __init__(self, root: Path, share: Path):
        if not os.path.exists(SMBD) or not SMBPASSWD:
            absent("Samba's smbd (Debian's samba)")
        self.root, self.share = root, share
        self.port = free_port()
        for d in ("state", "cache", "lock", "pid", "private", "log"):
            (root / d).mkdir(parents=True, exist_ok=True)
        share.mkdir(parents=True, exist_ok=True)
        self.conf = root / "smb.conf"
        self.conf.write_text(f"""[global]
smb ports = {self.port}
interfaces = 127.0.0.1
bind interfaces only = yes
server role = standalone server
passdb backend = tdbsam:{root}/private/passdb.tdb
private dir = {root}/private
state directory = {root}/state
cache directory = {root}/cache
lock directory = {root}/lock
pid directory = {root}/pid
ncalrpc dir = {root}/state/ncalrpc
log file = {root}/log/smbd.log
disable netbios = yes
load printers = no
printing = bsd
printcap name = /dev/null
server min protocol = SMB2
[jobs]
path = {share}
read only = no
force user = root
""")
        # smbpasswd adds a Samba user only for a Unix user of that name: one without a shell or home.
        # Tests in parallel workers may add it at once: useradd's 9 says another one was first.
        if subprocess.run(["id", SMB_USER], capture_output=True).returncode != 0:
            added = subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", SMB_USER], capture_output=True, text=True)
            if added.returncode not in (0, 9):
                raise RuntimeError(f"useradd {SMB_USER} exited {added.returncode}: {added.stderr.strip()}")
        subprocess.run([SMBPASSWD, "-c", str(self.conf), "-s", "-a", SMB_USER], check=True, capture_output=True,
                       input=f"{SMB_PASSWORD}\n{SMB_PASSWORD}\n", text=True)
        self.start()

    def start(self) -> None:
        self._spawn([SMBD, "-s", str(self.conf), "-F", "--no-process-group"], self.root / "smbd.out")

    def url(self, path: str) -> str:
        return f"smb://{SMB_USER}@127.0.0.1:{self.port}/jobs{path}"

    def remote(self, password_env: str = "SMB_TEST_PASSWORD", connections: int = 4) -> str:
        return remote_table(f"smb://{SMB_USER}@127.0.0.1:{self.port}", connections, password_env=password_env)


class S3Emulator:
    """moto's S3 server in this process: an S3 emulator, not AWS. Its objects live in this
    process's memory, so they outlive a stop and start (as a real store's would). With
    ``process``, in a process of its own (benchmarks: it does not share this one's CPU)."""

    def __init__(self, process: bool = False):
        try:
            from moto.server import ThreadedMotoServer
        except ImportError:
            absent("moto's S3 server (moto[server])")
        self.port = free_port()
        self.running = False
        if process:
            self.server = _MotoProcess(self.port)
        else:
            self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.server.start()
        _listening(self.port)
        self.running = True

    def stop(self) -> None:
        if self.running:
            self.server.stop()
            self.running = False

    def client(self):
        import boto3
        return boto3.session.Session().client("s3", endpoint_url=self.endpoint, region_name="us-east-1")

    def remote(self, bucket: str, connections: int = 4) -> str:
        return remote_table(f"s3://{bucket}", connections, endpoint_url=self.endpoint, region="us-east-1")


class _MotoProcess(_Daemon):
    def __init__(self, port: int):
        self.port = port

    def start(self) -> None:
        import sys
        server = Path(sys.executable).parent / "moto_server"
        self._spawn([str(server), "-H", "127.0.0.1", "-p", str(self.port)], Path(os.devnull))
