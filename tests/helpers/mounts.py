"""Small real filesystems for the tests: a tmpfs that can be filled up or remounted read-only.

Everything here runs as root, and root ignores permission bits, so a folder cannot be made
unwritable with chmod. A tmpfs mount binds root too: remounted read-only it answers EROFS, filled
up it answers ENOSPC. Mounting needs CAP_SYS_ADMIN; where that is missing (an unprivileged
container) the tests that need it are skipped with the reason.
"""

from __future__ import annotations

import errno
import shutil
import subprocess
from pathlib import Path

import pytest


def _mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)


class Tmpfs:
    """Mounts tmpfs filesystems on folders and unmounts them all at the end of the test."""

    def __init__(self):
        self.mounted: list[Path] = []

    def mount(self, folder: Path, size: str = "64k") -> Path:
        """A fresh tmpfs of ``size`` on ``folder`` (created); skips the test where mounting is not allowed."""
        if not shutil.which("mount"):
            pytest.skip("no mount command here: cannot make a small filesystem for this test")
        folder.mkdir(parents=True, exist_ok=True)
        proc = _mount("-t", "tmpfs", "-o", f"size={size},mode=0775", "tmpfs", str(folder))
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): {proc.stderr.strip()}")
        self.mounted.append(folder)
        return folder

    def read_only(self, folder: Path, on: bool = True) -> None:
        """Remount ``folder`` read-only (or writable again): what an operator or a failing disk does."""
        proc = _mount("-o", f"remount,{'ro' if on else 'rw'}", str(folder))
        if proc.returncode != 0:
            pytest.skip(f"cannot remount a tmpfs read-only here: {proc.stderr.strip()}")

    def unmount_all(self) -> None:
        for folder in reversed(self.mounted):
            # Lazy: a file a test left open must not keep the mount (and the temp folder) alive.
            subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30)
        self.mounted.clear()


def fill(folder: Path) -> Path:
    """Fill the filesystem holding ``folder`` until it answers ENOSPC; returns the filler file."""
    filler = folder / "filler.bin"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
    return filler
