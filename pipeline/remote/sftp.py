"""SFTP copies with paramiko: a temporary name, the server's fsync extension when it offers one,
then posix-rename over the target (docs/design.md#remote-destinations).

paramiko is the SSH library most Python tools use (Ansible, Fabric), kept up for two decades and
synchronous, which fits the router's copying threads. The host key is always verified against the
known_hosts file: an unknown or changed key refuses the connection.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket

import paramiko

from ..files import is_temporary_of, temporary_name
from . import Problem
from .urls import Settings, Where

TIMEOUT = 30.0          # seconds for connecting, authenticating and each request


class _Client(paramiko.SFTPClient):
    """paramiko's client, keeping the extensions the server offers (paramiko drops them)."""

    extensions: frozenset[str] = frozenset()

    def _send_version(self):
        message = paramiko.Message()
        message.add_int(3)
        self._send_packet(paramiko.sftp.CMD_INIT, message)
        kind, data = self._read_packet()
        if kind != paramiko.sftp.CMD_VERSION:
            raise paramiko.SFTPError("Incompatible sftp protocol")
        reply, names = paramiko.Message(data), []
        version = reply.get_int()
        while reply.get_remainder():
            names.append(reply.get_text())
            reply.get_string()
        self.extensions = frozenset(names)
        return version


class Connection:
    def __init__(self, where: Where, settings: Settings, create_folders: bool, dir_mode: int = 0o775):
        self.where, self.create_folders, self.dir_mode = where, create_folders, dir_mode
        self.folders: set[str] = set()
        password = os.environ.get(settings.password_env) if settings.password_env else None
        if settings.password_env and password is None:
            raise Problem(f"{where.label}: the variable {settings.password_env} (password_env) is not set")
        self.ssh = paramiko.SSHClient()
        try:
            self.ssh.load_host_keys(str(settings.host_keys))
        except OSError as e:
            raise Problem(f"{where.label}: cannot read the known_hosts file {settings.host_keys}: {e.strerror}")
        self.ssh.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            self.ssh.connect(where.host, where.port, username=where.user, password=password,
                             key_filename=str(settings.key_file) if settings.key_file else None,
                             look_for_keys=not (settings.key_file or password), allow_agent=False,
                             timeout=TIMEOUT, banner_timeout=TIMEOUT, auth_timeout=TIMEOUT)
            self.sftp = _Client.from_transport(self.ssh.get_transport())
            self.sftp.get_channel().settimeout(TIMEOUT)
        except paramiko.BadHostKeyException:
            self.ssh.close()
            raise Problem(f"{where.label}: the server's host key does not match the one in {settings.host_keys}"
                          " (not connected)") from None
        except paramiko.AuthenticationException as e:
            self.ssh.close()
            raise Problem(f"{where.label}: credentials refused ({e})") from None
        except paramiko.SSHException as e:
            self.ssh.close()
            if "not found in known_hosts" in str(e):
                raise Problem(f"{where.label}: its host key is not in {settings.host_keys} (not connected)") from None
            raise Problem(f"{where.label}: {e}") from None
        except OSError as e:
            self.ssh.close()
            raise Problem(f"{where.label}: unreachable: {e.strerror or e}") from None

    def close(self) -> None:
        self.ssh.close()

    def put(self, folder: str, name: str, data: bytes, sha256: str, replace: bool) -> bool:
        """Write ``data`` to ``folder/name`` at once; False, writing nothing, when ``replace`` is off
        and a file of that name is there."""
        target, tmp = f"{folder}/{name}", f"{folder}/{temporary_name(name)}"
        try:
            self._ensure(folder)
            with self.sftp.open(tmp, "wbx") as f:
                # Not pipelined: paramiko drops the status of pipelined writes it has not read by
                # close, and a write a full disk refused would be renamed into place short.
                f.write(data)
                if "fsync@openssh.com" in self.sftp.extensions:
                    f.flush()
                    self.sftp._request(paramiko.sftp.CMD_EXTENDED, "fsync@openssh.com", f.handle)
            if replace and "posix-rename@openssh.com" in self.sftp.extensions:
                self.sftp.posix_rename(tmp, target)
                return True
            if replace:         # a server without posix-rename: a moment with no file by that name
                self._remove(target)
            try:
                self.sftp.rename(tmp, target)   # SSH_FXP_RENAME never replaces an existing name
            except OSError:
                if not replace and self._exists(target):
                    self._remove(tmp)
                    return False
                raise
            return True
        except (OSError, EOFError, paramiko.SSHException) as e:
            self.folders.discard(folder)
            self._remove(tmp)
            raise Problem(f"{self.where.label}{target}: {_reason(e)}") from None

    def holds(self, folder: str, name: str, sha256: str) -> bool:
        try:
            with self.sftp.open(f"{folder}/{name}", "rb") as f:
                return hashlib.sha256(f.read()).hexdigest() == sha256
        except OSError:
            return False

    def clean(self, folder: str, name: str) -> int:
        """Remove the temporaries of ``name`` a writer stopped mid-copy left in ``folder``."""
        try:
            stale = [n for n in self.sftp.listdir(folder) if is_temporary_of(n, name)]
        except OSError:
            return 0
        for n in stale:
            self._remove(f"{folder}/{n}")
        return len(stale)

    def _ensure(self, folder: str) -> None:
        if folder in self.folders:
            return
        missing = []
        level = folder
        while level not in ("", "/") and not self._exists(level):
            missing.append(level)
            level = level.rsplit("/", 1)[0]
        if missing and not self.create_folders:
            raise OSError(errno.ENOENT, "destination folder is missing (router.create_folders is off)")
        for level in reversed(missing):
            try:
                self.sftp.mkdir(level, self.dir_mode)   # (a file's mode is the server's umask's)
            except OSError:
                if not self._exists(level):
                    raise
        self.folders.add(folder)

    def _exists(self, path: str) -> bool:
        try:
            self.sftp.lstat(path)
        except FileNotFoundError:
            return False
        return True

    def _remove(self, path: str) -> None:
        try:
            self.sftp.remove(path)
        except (OSError, EOFError, paramiko.SSHException):     # gone already, or the connection is
            pass


def _reason(e: Exception) -> str:
    if isinstance(e, (socket.timeout, EOFError, paramiko.SSHException)):
        return f"the connection was lost ({e})" if str(e) else "the connection was lost"
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    # OpenSSH's server answers a full disk, a read-only filesystem and most other errors with
    # SSH_FX_FAILURE: "Failure" is all it says.
    return "the server refused the write (full, read-only or no permission?)" if text == "Failure" else text
