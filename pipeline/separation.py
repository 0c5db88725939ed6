"""No place the pipeline writes to may feed the hot folder or another of its places
(docs/design.md#validation-and-routing).

The config's own check compares paths as written; this one looks at the disk: a symlink on the
way, or a bind mount (the same device and inode seen at another path), can make a destination
that looks separate write into the hot folder, where each copy becomes a new job (one file gave
1,950 jobs in 6 s). Every program and ``bin/check-config`` refuse such a config at start.
"""

from __future__ import annotations

import os
from pathlib import Path

from .config import Config
from .placeholders import Template


def _existing(path: Path) -> Path:
    """The deepest part of ``path`` that exists (without following a final symlink)."""
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def _real(path: Path) -> Path:
    """``path`` with every symlink on its existing part resolved."""
    existing = _existing(path)
    return Path(os.path.realpath(existing)) / path.relative_to(existing)


def _identities_on_the_way(path: Path) -> set[tuple[int, int]]:
    """(device, inode) of every existing folder from ``path`` up to the root."""
    found = set()
    for folder in [path, *path.parents]:
        try:
            st = os.stat(folder)
        except OSError:
            continue
        found.add((st.st_dev, st.st_ino))
    return found


def _folder_identities(folder: Path, with_subfolders: bool = False) -> set[tuple[int, int]]:
    """(device, inode) of ``folder`` and, if asked, of the folders directly in it."""
    found = set()
    try:
        st = os.stat(folder)
    except OSError:
        return found
    found.add((st.st_dev, st.st_ino))
    if with_subfolders:
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        found.add((st.st_dev, st.st_ino))
        except OSError:
            pass
    return found


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _under_a_file(path: Path) -> Path | None:
    """The existing part of ``path`` when it is not a folder (nothing can be created below it)."""
    existing = _existing(path)
    return existing if not os.path.isdir(existing) else None


class _Place:
    def __init__(self, key: str, path: Path, template: Template | None = None):
        self.key, self.path, self.template = key, path, template
        self.real = _real(path)
        self.on_the_way = _identities_on_the_way(path)

    def may_reach(self, other: "_Place", identities: set[tuple[int, int]]) -> bool:
        """Whether a job could fill this template to a folder in ``other`` (given its identities):
        by the paths as written, as resolved on the disk, or through a folder mounted right below
        the base (deeper levels are made by the router, which follows no symlink there)."""
        if self.template is None:
            return False
        return (self.template.may_reach(other.path) or self.template.may_reach(other.real, self.real)
                or bool(self._first_levels() & identities))

    def _first_levels(self) -> set[tuple[int, int]]:
        """(device, inode) of the folders right below the base that a job could fill it to."""
        found = set()
        try:
            with os.scandir(self.path) as entries:
                for entry in entries:
                    if self.template.below and self.template.below[0].could_be(entry.name):
                        try:
                            st = entry.stat()      # followed: a symlink there is refused at routing anyway
                        except OSError:
                            continue
                        found.add((st.st_dev, st.st_ino))
        except OSError:
            pass
        return found


def problems(config: Config) -> list[str]:
    """What makes one of the config's places write into the hot folder or into another place,
    each naming its key; empty when they are all apart."""
    p = config.paths
    hot = _Place("[paths] hot_folder", p.hot_folder)
    hot_ids = _folder_identities(p.hot_folder, with_subfolders=True)
    places = [_Place(f"[paths] {key}", getattr(p, key)) for key in ("store", "failed", "error_log")]
    # A rule whose to has placeholders is checked by its static base folder, and by what a job
    # could fill its placeholders with below it.
    routes = [_Place(f"[[route]] {r.name!r} to", r.to, r.template) for r in config.routes
              if r.remote is None]                  # a remote path is not on this host's disks
    found = []
    for place in places + routes:
        blocker = _under_a_file(place.path)
        if blocker is not None:
            found.append(f"{place.key}: {place.path} lies under {blocker}, which is not a folder")
        elif _inside(place.real, hot.real) or place.on_the_way & hot_ids:
            found.append(f"{place.key}: {place.path} resolves into the hot folder {p.hot_folder} "
                         "(through a symlink or a mount); every copy there would become a new job")
        elif place.may_reach(hot, hot_ids):
            found.append(f"{place.key}: a job could fill it to a folder in the hot folder {p.hot_folder} "
                         f"(below its base {place.path}); every copy there would become a new job")
    for route in routes:
        for place in places[:2]:
            if (_inside(route.real, place.real) or route.on_the_way & _folder_identities(place.path)
                    or route.may_reach(place, _folder_identities(place.path))):
                found.append(f"{route.key}: {route.path} lies in {place.key.split()[-1]} {place.path}; "
                             "a destination must be a folder of its own")
    seen: dict[tuple, _Place] = {}
    for route in routes:
        if route.template is not None:
            continue        # its folders are made per job; the same one twice is copied to once
        same = seen.get(_folder_key(route))
        if same is not None and same.path != route.path:
            found.append(f"{route.key}: {route.path} is the same folder as {same.key.split(' to')[0]}'s "
                         f"{same.path}; give both rules the same to, and each file is copied there once")
        seen.setdefault(_folder_key(route), route)
    return found


def _folder_key(place: _Place) -> tuple:
    """What one real folder is: its device and inode when it exists, else its resolved path."""
    try:
        st = os.stat(place.path)
        return (st.st_dev, st.st_ino)
    except OSError:
        return (str(place.real),)
