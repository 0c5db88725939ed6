"""Validation of a job file's content: every failure is one line a person understands
(docs/design.md#validation-and-routing, docs/design.md#bad-input)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from . import strictjson

_SAFE_COMPONENT = re.compile(r"[A-Za-z0-9_.-]+")
_TITLE_LIMIT = 500   # a Title is for reports; the file itself keeps the whole text
_DETAILS = ("ClientCode", "JobCategory", "StudioCode", "Title")
# The parts of a job file validation reads; the parser checks the rest and keeps none of it.
_WANTED = {"JobSpecification": {"JobDetails": {key: strictjson.KEEP for key in _DETAILS}}}


class Invalid(Exception):
    """The file is not a valid job; str() is the one-line reason."""


@dataclass(frozen=True)
class JobDetails:
    client_code: str
    job_category: str
    studio_code: str | None
    title: str | None
    # The parsed job as far as ``wanted`` reached: the details above, and what the rules read.
    document: dict = field(default_factory=dict, compare=False, repr=False)


def wanted(paths: Iterable[tuple[str, ...]]) -> dict:
    """What validation keeps of a job file: its details, and the values at ``paths`` (the dotted
    paths the routing rules read). Built once at start; the rest of a file is checked and dropped."""
    tree = _copy(_WANTED)
    for keys in paths:
        node = tree
        for key in keys[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = {}          # deeper than a KEEP: the dict keeps what is needed below
            node = node[key]
        node.setdefault(keys[-1], strictjson.KEEP)
    return tree


def _copy(tree: dict) -> dict:
    return {k: _copy(v) if isinstance(v, dict) else v for k, v in tree.items()}


def too_large(size: int, limit: int) -> Invalid:
    """The reason for a file over ``router.max_file_bytes`` (it is never read)."""
    return Invalid(f"file is {size:,} bytes, over the limit of {limit:,} (router.max_file_bytes)")


def is_safe_component(name: str) -> bool:
    """Letters, digits, ``_``, ``-`` and ``.``, and not a name that means a folder (``.``, ``..``)."""
    return bool(_SAFE_COMPONENT.fullmatch(name)) and name.strip(".") != ""


# Names Windows keeps for its devices, in any case and whatever follows a dot ("con.json",
# "Com1.txt"): an SMB share refuses a file so named, or the copy goes to the device.
_DEVICE_NAMES = frozenset(["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
                          + [port + n for port in ("COM", "LPT") for n in "0123456789\u00b9\u00b2\u00b3"])


def share_problem(name: str) -> str | None:
    """Why ``name`` cannot name a copy's file or folder, or None. Destinations are often Windows
    (SMB) shares, and the hot folders of the next application: a device name or a trailing dot or
    space is an error there or a file nobody can open, and a leading dot hides the copy from that
    hot folder. Said as what follows "gives 'CON.json', ..." in a job's reason."""
    device = name.partition(".")[0].rstrip(" ").upper()
    if device in _DEVICE_NAMES:
        return f"a name Windows shares cannot hold ({device} is a device name)"
    if name.endswith((".", " ")):
        return f"a name Windows shares cannot hold (it ends with a {'dot' if name.endswith('.') else 'space'})"
    if name.startswith("."):
        return "a hidden name (it starts with a dot) that the next hot folder would ignore"
    return None


def parse(data: bytes, client_folder: str, keep: dict = _WANTED) -> JobDetails:
    """Decode, parse and check a job file found in ``client_folder``; raises Invalid. ``keep`` is
    what of the document to keep (``wanted``), beyond the details it always reads."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]                           # a UTF-8 byte order mark is tolerated
    if not data:
        raise Invalid("file is empty")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Invalid(f"not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})") from None
    if not text.strip():
        raise Invalid("file contains only whitespace")
    try:
        document = strictjson.loads(text, keep)
    except json.JSONDecodeError as e:
        # Some of the parser's messages end with "at" already ("Unterminated string starting at").
        raise Invalid(f"invalid JSON: {e.msg.removesuffix(' at')} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise Invalid("invalid JSON: nested too deeply") from None
    except strictjson.Refused as e:
        raise Invalid(f"not allowed in a job file: {e}") from None
    if not isinstance(document, dict):
        raise Invalid(f"JSON top level is {_kind(document)}, expected an object")

    details = _required(document, "JobSpecification", dict, "an object")
    details = _required(details, "JobDetails", dict, "an object", "JobSpecification.")
    client_code = _required_string(details, "ClientCode")
    job_category = _required_string(details, "JobCategory")

    if not is_safe_component(client_code):
        raise Invalid(f"ClientCode {client_code!r} is not a safe folder name "
                      "(only letters, digits, _, - and . are allowed)")
    if client_code.upper() != client_folder.upper():
        raise Invalid(f"ClientCode {client_code!r} does not match its client folder {client_folder!r}")
    return JobDetails(client_code=client_code.upper(), job_category=job_category,
                      studio_code=_optional_string(details, "StudioCode"),
                      title=_optional_string(details, "Title", _TITLE_LIMIT), document=document)


def _required(container: dict, key: str, kind: type, expected: str, parent: str = "") -> Any:
    """``container[key]`` when it is a ``kind``; else Invalid: missing, or what it is instead (null too)."""
    if key not in container:
        raise Invalid(f"missing {parent}{key}")
    value = container[key]
    if not isinstance(value, kind):
        raise Invalid(f"{parent}{key} must be {expected}, not {_kind(value)}")
    return value


def _required_string(details: dict, key: str) -> str:
    value = _required(details, key, str, "a non-empty string", "JobSpecification.JobDetails.")
    if not value.strip():
        raise Invalid(f"JobSpecification.JobDetails.{key} is empty")
    return _storable(value.strip(), key)


def _optional_string(details: dict, key: str, limit: int | None = None) -> str | None:
    value = details.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return None
    return _storable(value[:limit] if limit else value, key)


def _storable(value: str, key: str) -> str:
    """A value the job table records must be text every engine stores. ``"\\u0000"`` parses, but
    PostgreSQL's text refuses NUL (SQLite keeps it): refused on both, so that a job's fate does not
    depend on the engine, and before any copy is made. A lone UTF-16 surrogate (``"\\ud800"``)
    parses but is not Unicode text: no database, log or report can hold it. (Those are the only
    characters a JSON string can carry that PostgreSQL's UTF-8 text cannot.)"""
    if "\0" in value:
        raise Invalid(f"JobSpecification.JobDetails.{key} holds a NUL character (\\u0000), "
                      "which the job table cannot store")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise Invalid(f"JobSpecification.JobDetails.{key} holds a lone UTF-16 surrogate "
                      f"(\\u{ord(value[e.start]):04x}), which is not text") from None
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "an array", dict: "an object"}[type(value)]
