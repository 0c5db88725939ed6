"""Routing rules: data from the config deciding which destinations a job is copied to (SPEC §5)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .config import Route


@dataclass(frozen=True)
class Destination:
    name: str      # the rule's label, for logs and reports
    folder: Path


def destinations(routes: Sequence[Route], client: str, category: str) -> list[Destination]:
    """The destinations of every matching rule, in rule order, each folder once.

    A rule matches when each list it has contains the job's value, case-insensitively; a rule
    without a list matches any value. No match: the job is archived only.
    """
    client, category = client.upper(), category.upper()
    chosen: dict[Path, Destination] = {}
    for route in routes:
        if route.clients is not None and client not in route.clients:
            continue
        if route.categories is not None and category not in route.categories:
            continue
        chosen.setdefault(route.to, Destination(route.name, route.to))
    return list(chosen.values())
