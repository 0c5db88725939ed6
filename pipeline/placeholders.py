"""Destinations built from the job: placeholders in a rule's ``to`` and ``rename``
(docs/design.md#validation-and-routing).

A template is compiled once at start into literal text and placeholders; a placeholder that names
nothing known, a bad date format or a literal ``..`` is a ValueError there (the config names the
key). At routing, every substituted value must be a safe path component, so no value can climb
out of the rule's base folder (the part of ``to`` before its first placeholder) or add a level.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import string
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .files import NAME_MAX
from .validation import JobDetails, is_safe_component, share_problem

MISSING = object()      # what a dotted path finds in a job that does not have it

# Placeholders whose value is the job's own (validated) details or its file.
SIMPLE = ("ClientCode", "JobCategory", "StudioCode", "client", "name", "stem")
# Directives whose output is letters and digits only (in the C locale the programs run in); a
# format that could print "/" or a space would split or blur a folder name.
_DATE_DIRECTIVES = set("aAbBdHIjmMpSuUVwWyYG")
_DATE_LITERAL = re.compile(r"[A-Za-z0-9_.-]")
_INDEX = re.compile(r"(?:0|[1-9][0-9]*)")   # a list index as written canonically


class Unsafe(Exception):
    """A substituted value cannot be a path component; str() is the job's one-line reason."""


@dataclass(frozen=True)
class Facts:
    """What a template and a rule may read of one job."""
    client: str                     # the client folder the file was found in
    name: str                       # the file's name
    client_code: str                # upper-cased, as validation gives it
    job_category: str
    studio_code: str | None
    document: Any                   # the parsed job, as much of it as the rules name (validation.parse)
    detected_at: float              # epoch seconds
    category_key: str = field(init=False, repr=False, compare=False)   # JobCategory as rules compare it

    def __post_init__(self) -> None:
        object.__setattr__(self, "category_key", self.job_category.upper())

    @classmethod
    def of(cls, details: JobDetails, client: str, name: str, detected_at: float) -> "Facts":
        """The facts of a job file ``name`` found in ``client``, validated into ``details``."""
        return cls(client=client, name=name, client_code=details.client_code, job_category=details.job_category,
                   studio_code=details.studio_code, document=details.document, detected_at=detected_at)

    @classmethod
    def plain(cls, client_code: str, job_category: str, name: str = "job.json") -> "Facts":
        """A job known by its codes alone (for tools that route the seeds' matrix)."""
        return cls(client=client_code, name=name, client_code=client_code.upper(), job_category=job_category,
                   studio_code=None, document={}, detected_at=0.0)

    @property
    def stem(self) -> str:
        return os.path.splitext(self.name)[0]


def split_path(text: str) -> tuple[str, ...]:
    """A dotted path as its keys; list items are named by their index (``Items.0.Code``)."""
    keys = tuple(text.split("."))
    if not text or any(not k for k in keys):
        raise ValueError(f"{text!r} is not a dotted path such as JobSpecification.JobDetails.StudioCode")
    return keys


def lookup(document: Any, keys: tuple[str, ...]) -> Any:
    """The value at ``keys`` in ``document``, or MISSING."""
    value = document
    for key in keys:
        if isinstance(value, dict):
            value = value.get(key, MISSING)
        elif isinstance(value, list) and _INDEX.fullmatch(key) and int(key) < len(value):
            value = value[int(key)]
        else:
            return MISSING
        if value is MISSING:
            return MISSING
    return value


def as_text(value: Any) -> str | None:
    """A JSON scalar as the text it is compared and substituted as (``true``, ``null``, ``12``);
    None for an object or an array, which never match and never name a folder."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    return None


def is_one_component(name: str) -> bool:
    """A name that stays one level in a path: not empty, no ``/`` or NUL, not ``.`` or ``..``."""
    return bool(name) and "/" not in name and "\0" not in name and name not in (".", "..")


@dataclass(frozen=True)
class _Placeholder:
    text: str                                   # as written, for reasons: "{field:Items.0.Code}"
    value: Callable[[Facts], Any]               # MISSING when the job has no such value
    # Values from the job's content must be safe folder names. The file's own name and
    # folder already are one component on disk and are copied under that name without a rename:
    # holding them to letters and digits would fail every "Proof 1.json".
    from_content: bool = True


def _placeholder(name: str, spec: str, timezone: str) -> _Placeholder:
    text = "{" + name + (":" + spec if spec else "") + "}"
    if name in SIMPLE:
        if spec:
            raise ValueError(f"{text}: {{{name}}} takes no format")
        attribute = {"ClientCode": "client_code", "JobCategory": "job_category",
                     "StudioCode": "studio_code"}.get(name, name)
        return _Placeholder(text, lambda facts: _or_missing(getattr(facts, attribute)),
                            from_content=name not in ("client", "name", "stem"))
    if name == "field":
        keys = split_path(spec)
        return _Placeholder(text, lambda facts: lookup(facts.document, keys))
    if name == "date":
        _check_date_format(text, spec)
        zone = zoneinfo.ZoneInfo(timezone)
        return _Placeholder(text, lambda facts: _dt.datetime.fromtimestamp(facts.detected_at, zone).strftime(spec))
    known = ", ".join("{" + n + "}" for n in SIMPLE)
    raise ValueError(f"{text} names nothing known (known: {known}, {{field:dotted.path}}, {{date:FORMAT}})")


def _or_missing(value: str | None) -> Any:
    return MISSING if value is None else value


def _check_date_format(text: str, spec: str) -> None:
    if not spec:
        raise ValueError(f"{text} needs a format, such as {{date:%Y-%m-%d}}")
    i = 0
    while i < len(spec):
        if spec[i] == "%":
            directive = spec[i + 1:i + 2]
            if directive not in _DATE_DIRECTIVES:
                raise ValueError(f"{text}: %{directive} is not a date directive a folder name can hold "
                                 f"(use %{', %'.join(sorted(_DATE_DIRECTIVES))})")
            i += 2
        elif not _DATE_LITERAL.fullmatch(spec[i]):
            raise ValueError(f"{text}: {spec[i]!r} cannot be in a folder name; write one {{date:...}} "
                             "per level, such as {date:%Y}/{date:%m}")
        else:
            i += 1


@dataclass(frozen=True)
class Component:
    """One path component (or a file name): literal text and placeholders, in order."""
    parts: tuple[str | _Placeholder, ...]
    text: str = ""                              # as written, for reasons

    @property
    def static(self) -> bool:
        return all(isinstance(p, str) for p in self.parts)

    def could_be(self, name: str) -> bool:
        """Whether some job could expand this component to ``name`` (placeholders: anything)."""
        pattern = "".join(re.escape(p) if isinstance(p, str) else ".+" for p in self.parts)
        return re.fullmatch(pattern, name, re.IGNORECASE | re.DOTALL) is not None

    def expand(self, facts: Facts, where: str) -> str:
        out = []
        for part in self.parts:
            out.append(part if isinstance(part, str) else _substitute(part, facts, where))
        name = "".join(out)
        if len(os.fsencode(name)) > NAME_MAX:       # each value fits, but not with the rest of the name
            raise Unsafe(f"{where}: {name[:80]!r}... is longer than a file or folder name may be "
                         f"({NAME_MAX} bytes)")
        # Each value is safe, but together with the rest they may give a name a share cannot hold.
        problem = share_problem(name)
        if problem:
            raise Unsafe(f"{where}: {self.text} gives {name!r}, {problem}")
        return name

    def check_holdable(self) -> None:
        """Refuse, at start, a component that gives a name no copy may have whatever the job:
        its literal text alone makes it a device name, or makes it start with a dot or end with
        a dot or space (``.{name}``, ``{stem}.``, ``CON.{stem}``). Raises ValueError."""
        # "_" is in no device name and neither starts nor ends a problem: what the sample shows
        # comes from the literal text, so it holds for every value.
        sample = "".join(p if isinstance(p, str) else "_" for p in self.parts)
        problem = share_problem(sample)
        if problem:
            raise ValueError(f"{self.text!r} {'is' if self.static else 'always gives'} {problem}")


def _substitute(placeholder: _Placeholder, facts: Facts, where: str) -> str:
    value = placeholder.value(facts)
    if value is MISSING:
        raise Unsafe(f"{where}: {placeholder.text} is missing in this job")
    text = as_text(value)
    if text is None or value is None:
        kind = "null" if value is None else "an object" if isinstance(value, dict) else "an array"
        raise Unsafe(f"{where}: {placeholder.text} is {kind}, not a value that can name a folder")
    shown = repr(text[:80]) + ("..." if len(text) > 80 else "")
    if not placeholder.from_content and not is_one_component(text):
        raise Unsafe(f"{where}: {placeholder.text} is {shown}, which cannot be one file or folder name")
    if placeholder.from_content and not is_safe_component(text):
        raise Unsafe(f"{where}: {placeholder.text} is {shown}, not a safe folder name "
                     "(only letters, digits, _, - and . are allowed)")
    if len(os.fsencode(text)) > NAME_MAX:
        raise Unsafe(f"{where}: {placeholder.text} is {shown}, longer than a file or folder name may be "
                     f"({NAME_MAX} bytes)")
    return text


def component(text: str, timezone: str) -> Component:
    """Compile one path component; raises ValueError naming the problem."""
    parts: list[str | _Placeholder] = []
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as e:
        raise ValueError(f"{text!r}: {e} (write {{{{ and }}}} for literal braces)") from None
    for literal, name, spec, conversion in parsed:
        if literal:
            parts.append(literal)
        if name is None:
            continue
        if conversion:
            raise ValueError(f"{text!r}: !{conversion} is not supported in a placeholder")
        if not name:
            raise ValueError(f"{text!r}: an empty placeholder {{}} names nothing")
        parts.append(_placeholder(name, spec or "", timezone))
    return Component(tuple(parts), text)


@dataclass(frozen=True)
class Template:
    """A ``to`` with placeholders: its static base folder and the components below it."""
    base: Path
    below: tuple[Component, ...]
    paths: tuple[tuple[str, ...], ...] = field(default=())   # the dotted paths its {field:} name

    def expand(self, facts: Facts, where: str) -> Path:
        return self.base.joinpath(*(c.expand(facts, where) for c in self.below))

    def may_reach(self, folder: Path, base: Path | None = None) -> bool:
        """Whether some job could make a copy land in ``folder`` or below it (``base``: this
        template's base as seen on the disk, when that differs from the configured one)."""
        base = base or self.base
        if folder == base or folder in base.parents:
            return True
        if base not in folder.parents:
            return False
        levels = folder.relative_to(base).parts
        # Copies land in a folder as deep as the template; a shallower one lies above `folder`.
        return len(levels) <= len(self.below) and all(c.could_be(n) for c, n in zip(self.below, levels))


def destination(text: str, timezone: str, resolve: Callable[[str], Path]) -> Path | Template:
    """A rule's ``to``: a Path when it has no placeholder, else a Template; raises ValueError."""
    pieces = _split_levels(text)
    compiled = [component(piece, timezone) for piece in pieces]
    first = next((i for i, c in enumerate(compiled) if not c.static), None)
    if first is None:
        return resolve("/".join(_literal(c) for c in compiled))
    below = []
    for piece, c in zip(pieces[first:], compiled[first:]):
        if c.static and piece in ("", "."):
            continue
        if c.static and piece == "..":
            raise ValueError(f"{text!r}: '..' after a placeholder would leave the rule's base folder")
        c.check_holdable()
        below.append(c)
    base = resolve("/".join(_literal(c) for c in compiled[:first]) or ("/" if text.startswith("/") else "."))
    return Template(base, tuple(below), _field_paths(below))


def _split_levels(text: str) -> list[str]:
    """``to`` split at each ``/`` outside a placeholder, so that ``{date:%Y/%m}`` stays whole
    (and is then refused with the reason)."""
    pieces, depth, start, i = [], 0, 0, 0
    while i < len(text):
        char = text[i]
        if depth == 0 and text[i:i + 2] in ("{{", "}}"):
            i += 2                                  # a literal brace
            continue
        depth += (char == "{") - (char == "}")
        if char == "/" and depth <= 0:
            pieces.append(text[start:i])
            start = i + 1
        i += 1
    return pieces + [text[start:]]


def _literal(c: Component) -> str:
    """A static component's text, its doubled braces undone."""
    return "".join(c.parts)


def file_name(text: str, timezone: str) -> Component:
    """A rule's ``rename``: one file name, never a folder; raises ValueError."""
    if "/" in text or "\0" in text:
        raise ValueError(f"{text!r}: a file name, so it cannot hold '/'; put folders in to")
    c = component(text, timezone)
    if c.static and text in (".", ".."):
        raise ValueError(f"{text!r} is not a file name")
    if not c.parts:
        raise ValueError("an empty file name")
    c.check_holdable()
    return c


def _field_paths(components) -> tuple[tuple[str, ...], ...]:
    """The dotted paths the components' ``{field:...}`` placeholders read (validation keeps them)."""
    found = []
    for c in components:
        for part in c.parts:
            if isinstance(part, _Placeholder) and part.text.startswith("{field:"):
                found.append(split_path(part.text[len("{field:"):-1]))
    return tuple(found)


def field_paths(c: Component) -> tuple[tuple[str, ...], ...]:
    return _field_paths([c])
