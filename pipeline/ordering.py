"""Order per key (docs/design.md#order-per-key): with ``router.order_by`` set, jobs with the same
value at that dotted path are routed in the order they were detected, and jobs with other values
flow in parallel.

This module says what a job's key is and how its wait reads; ``Jobs.order`` records the keys and
finds who waits for whom, and the router holds back a job whose earlier job of its key is not
settled yet.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .convert import is_utf8
from .placeholders import MISSING, as_text, lookup

UNORDERED = ""          # the key of a job without a value at order_by (or read with ordering off)
KEY_LIMIT = 200         # characters of a value kept as it is; a longer one is kept as its digest


@dataclass(frozen=True)
class Key:
    """A job's key as read from its document: ``value`` is what the table records (UNORDERED when
    the job has none), ``why`` says why it has none."""
    value: str
    shown: str = ""     # the value as a person reads it, cut short
    why: str = ""

    @property
    def ordered(self) -> bool:
        return self.value != UNORDERED


def key_of(document: dict, keys: tuple[str, ...]) -> Key:
    """The job's key at ``keys`` (``router.order_by`` split), compared as ``match`` compares: a
    scalar's JSON text, ignoring case. Missing, empty, an object or an array: unordered."""
    path = ".".join(keys)
    value = lookup(document, keys)
    if value is MISSING:
        return Key(UNORDERED, why=f"{path} is missing")
    text = as_text(value)
    if text is None:
        return Key(UNORDERED, why=f"{path} is {'an object' if isinstance(value, dict) else 'an array'}, not a value")
    if not text.strip():
        return Key(UNORDERED, why=f"{path} is empty")
    folded = text.casefold()
    shown = text if len(text) <= 40 else text[:37] + "..."
    # A value the index and every engine's text can hold: not too long, no NUL, no lone surrogate.
    if len(folded) > KEY_LIMIT or "\0" in folded or not is_utf8(folded):
        folded = "sha256:" + hashlib.sha256(folded.encode("utf-8", "surrogatepass")).hexdigest()
    return Key(folded, shown=shown)


def paths(order_by: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The paths validation keeps for ordering: order_by's, when set."""
    return [order_by] if order_by else []


def describe(document: dict, order_by: tuple[str, ...]) -> str:
    """The job's key as ``bin/route --explain`` shows it."""
    key = key_of(document, order_by)
    if key.ordered:
        return f"{'.'.join(order_by)} = {key.shown} (routed after the earlier jobs with that value)"
    return f"none: {key.why}; the job is unordered"


def field_name(keys: tuple[str, ...]) -> str:
    """How a wait names the key: the last part of its path ("JobNumber")."""
    return keys[-1]


def after_text(keys: tuple[str, ...], blocker: int, key: Key) -> str:
    """The cause of a wait behind an earlier job of the same key."""
    return f"after job #{blocker} with the same {field_name(keys)} {key.shown}"


def unread_text(keys: tuple[str, ...], blocker: int) -> str:
    """The cause of a wait behind an earlier job still being read (its key may be the same)."""
    return f"waiting for earlier jobs to be read (job #{blocker}: its {field_name(keys)} is not known yet)"


def unordered_text(key: Key) -> str:
    """What a routed job's audit event adds when it had no key."""
    return f"unordered: {key.why}"
