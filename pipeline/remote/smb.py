"""SMB copies with smbprotocol's smbclient: a temporary name, flushed, then renamed over the target
with replace (docs/design.md#remote-destinations).

smbprotocol is the pure-Python SMB 2/3 client (signing, encryption, NTLM and Kerberos) that
Ansible's Windows modules use; it reaches a share with no mount, which a Linux host may not be
allowed to make. One SMB connection carries many requests at once: the pool bounds how many
copies use it together.
"""

from __future__ import annotations

import errno
import hashlib
import os

import smbclient
import smbprotocol.exceptions

from ..files import is_temporary_of, temporary_name
from . import Problem
from .urls import Settings, Where

TIMEOUT = 30


class Session:
    def __init__(self, where: Where, settings: Settings, create_folders: bool):
        self.where, self.create_folders = where, create_folders
        self.folders: set[str] = set()
        self.cache: dict = {}           # this session's own connections, not smbclient's global pool
        password = os.environ.get(settings.password_env) if settings.password_env else None
        if settings.password_env and password is None:
            raise Problem(f"{where.label}: the variable {settings.password_env} (password_env) is not set")
        user = where.user
        if user and settings.domain:
            user = f"{settings.domain}\\{user}"
        self.options = {"port": where.port, "connection_cache": self.cache}
        try:
            smbclient.register_session(where.host, username=user, password=password, connection_timeout=TIMEOUT,
                                       auth_protocol="ntlm" if password else "negotiate", **self.options)
        except (smbprotocol.exceptions.SMBException, ValueError, OSError) as e:
            self.close()
            raise Problem(f"{where.label}: {_reason(e)}") from None

    def close(self) -> None:
        smbclient.reset_connection_cache(connection_cache=self.cache)

    def _unc(self, path: str) -> str:
        return "\\\\" + self.where.host + path.replace("/", "\\")

    def put(self, folder: str, name: str, data: bytes, sha256: str, replace: bool) -> bool:
        target, tmp = self._unc(f"{folder}/{name}"), self._unc(f"{folder}/{temporary_name(name)}")
        try:
            self._ensure(folder)
            with smbclient.open_file(tmp, mode="xb", buffering=0, **self.options) as f:
                view = memoryview(data)
                while view:
                    view = view[f.write(view):]
                f.flush()           # SMB2 FLUSH: the server writes it to its disk
            try:
                (smbclient.replace if replace else smbclient.rename)(tmp, target, **self.options)
            except OSError as e:
                if e.errno != errno.EEXIST:
                    raise
                self._remove(tmp)
                return False
            return True
        except (smbprotocol.exceptions.SMBException, ValueError, OSError) as e:
            self.folders.discard(folder)
            self._remove(tmp)
            raise Problem(f"{self.where.label}{folder}/{name}: {_reason(e)}") from None

    def holds(self, folder: str, name: str, sha256: str) -> bool:
        try:
            with smbclient.open_file(self._unc(f"{folder}/{name}"), mode="rb", **self.options) as f:
                return hashlib.sha256(f.read()).hexdigest() == sha256
        except (smbprotocol.exceptions.SMBException, ValueError, OSError):
            return False

    def clean(self, folder: str, name: str) -> int:
        try:
            stale = [n for n in smbclient.listdir(self._unc(folder), **self.options) if is_temporary_of(n, name)]
        except (smbprotocol.exceptions.SMBException, ValueError, OSError):
            return 0
        for n in stale:
            self._remove(self._unc(f"{folder}/{n}"))
        return len(stale)

    def _ensure(self, folder: str) -> None:
        if folder in self.folders:
            return
        unc = self._unc(folder)
        if not self.create_folders:
            if not smbclient.path.isdir(unc, **self.options):
                raise OSError(errno.ENOENT, "destination folder is missing (router.create_folders is off)")
        elif folder.count("/") > 1:         # below the share itself
            smbclient.makedirs(unc, exist_ok=True, **self.options)
        self.folders.add(folder)

    def _remove(self, unc: str) -> None:
        try:
            smbclient.remove(unc, **self.options)
        except (smbprotocol.exceptions.SMBException, ValueError, OSError):
            pass


def _reason(e: Exception) -> str:
    if isinstance(e, smbprotocol.exceptions.SMBAuthenticationError) or "STATUS_LOGON_FAILURE" in str(e):
        return "credentials refused"
    if isinstance(e, ValueError) and "Failed to connect" in str(e):
        return f"unreachable: {str(e).rpartition(': ')[2]}"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return " ".join(str(e).split()) or type(e).__name__
