"""Routing rules: data from the config deciding which destinations a job is copied to
(docs/design.md#validation-and-routing).

A rule's conditions (``clients``, ``categories``, ``match``, ``files``) are combined with AND; an
absent one matches anything. Everything is compiled once, when the config is loaded: at routing a
rule is a few set lookups and, for the features it uses, a dict walk or a regular expression.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from . import placeholders
from .remote import urls
from .convert import DAYS
from .placeholders import MISSING, Facts, Unsafe
from .validation import share_problem

__all__ = ["Route", "Destination", "Facts", "Unsafe", "compile_route", "destinations", "evaluate",
           "paths_named"]

_FILE_GLOB_PROBLEM = re.compile(r"[/\0]")


@dataclass(frozen=True)
class Condition:
    """``match``: the value at a dotted path must be one of ``allowed`` (case-folded text)."""
    path: str
    keys: tuple[str, ...]
    allowed: frozenset[str]
    shown: str                      # the allowed values as written, for explanations

    def holds(self, document: Any) -> bool:
        text = placeholders.as_text(placeholders.lookup(document, self.keys))   # MISSING: None, as a container
        return text is not None and text.casefold() in self.allowed

    def failure(self, document: Any) -> str | None:
        """Why the condition does not hold, in one line; None when it does."""
        if self.holds(document):
            return None
        value = placeholders.lookup(document, self.keys)
        if value is MISSING:
            return f"match {self.path}: missing in this job"
        text = placeholders.as_text(value)
        if text is None:
            return f"match {self.path}: is {'an object' if isinstance(value, dict) else 'an array'}, not a value"
        return f"match {self.path}: {text[:80]!r} is not one of {self.shown}"


@dataclass(frozen=True)
class Route:
    """A routing rule. ``to`` is its folder, or, when ``to`` has placeholders, its static base;
    on a remote destination (``remote``), the path there."""
    name: str
    to: Path
    clients: frozenset[str] | None = None      # upper-cased; None matches any client
    categories: frozenset[str] | None = None   # upper-cased; None matches any category
    match: tuple[Condition, ...] = ()
    files: re.Pattern | None = None            # the globs as one case-insensitive expression
    files_shown: str = ""
    template: placeholders.Template | None = None
    rename: placeholders.Component | None = None
    hold: bool = False                          # an approval step: a matching job waits, held, for a person
    remote: urls.Where | None = None           # sftp://, s3:// or smb://: ``to`` is the path there
    # Flow control (docs/design.md#flow-control): set by the configuration after compiling.
    max_waiting: int | None = None             # the most job files its folder may hold
    hours: tuple[int, int] | None = None       # its window, minutes after local midnight (None: all day)
    days: frozenset[int] | None = None         # the weekdays its window starts on (None: every day)

    @property
    def window_text(self) -> str:
        hours = "-".join(f"{m // 60:02d}:{m % 60:02d}" for m in self.hours) if self.hours else "00:00-24:00"
        return hours + (" on " + ",".join(DAYS[d] for d in sorted(self.days)) if self.days is not None else "")

    def matches(self, facts: Facts) -> bool:
        """Every condition holds (what ``failure`` explains, without building its words)."""
        return ((self.clients is None or facts.client_code in self.clients)
                and (self.categories is None or facts.category_key in self.categories)
                and all(c.holds(facts.document) for c in self.match)
                and (self.files is None or self.files.fullmatch(facts.name) is not None))

    def failure(self, facts: Facts) -> str | None:
        """The first condition the job does not meet, in one line; None when the rule matches."""
        if self.clients is not None and facts.client_code not in self.clients:
            return f"clients: {facts.client_code} is not one of {', '.join(sorted(self.clients))}"
        if self.categories is not None and facts.category_key not in self.categories:
            return f"categories: {facts.category_key} is not one of {', '.join(sorted(self.categories))}"
        for condition in self.match:
            problem = condition.failure(facts.document)
            if problem:
                return problem
        if self.files is not None and not self.files.fullmatch(facts.name):
            return f"files: {facts.name} matches none of {self.files_shown}"
        return None

    def target(self, facts: Facts) -> Path:
        """Where this rule's copy of the job goes; raises Unsafe naming the placeholder and value."""
        where = f"[[route]] {self.name!r}"
        folder = self.template.expand(facts, f"{where} to") if self.template else self.to
        if self.rename:
            return folder / self.rename.expand(facts, f"{where} rename")
        # Copied under its own name: a name the hot folder holds (con.json) may be one a share
        # cannot. The archive copy is local, and made all the same.
        problem = share_problem(facts.name)
        if problem:
            raise Unsafe(f"{where}: the file name {facts.name!r} is {problem}")
        return folder / facts.name


@dataclass(frozen=True)
class Destination:
    name: str      # the rule's label, for logs and reports
    folder: Path
    file_name: str
    base: Path     # the folder nothing below which is a symlink the copy may follow (its static part)
    templated: bool = False
    remote: urls.Where | None = None    # the copy goes there, ``folder`` being the path on it
    route: Route | None = field(default=None, compare=False, repr=False)    # its rule, for flow control

    @property
    def path(self) -> Path:
        return self.folder / self.file_name

    @property
    def where(self) -> str:
        """Where the copy goes, as recorded: a path, or a URL on a remote."""
        return f"{self.remote.label}{self.path}" if self.remote else str(self.path)


def destinations(routes: Sequence[Route], facts: Facts) -> list[Destination]:
    """The destinations of every matching rule, in rule order, each target path once.

    No match: the job is archived only. Raises Unsafe when a matching rule's template cannot be
    filled from this job: the job fails rather than going to some of its places.
    """
    chosen: dict[tuple, Destination] = {}
    for route in routes:
        if route.matches(facts):
            _choose(chosen, route, route.target(facts))
    return list(chosen.values())


def holding(routes: Sequence[Route], facts: Facts) -> Route | None:
    """The first rule with ``hold = true`` that the job matches (its approval step), or None."""
    return next((route for route in routes if route.hold and route.matches(facts)), None)


def names_client(routes: Sequence[Route], client: str) -> bool:
    """Whether some rule may route this client folder's jobs: one naming it, or one naming no client."""
    return any(route.clients is None or client.upper() in route.clients for route in routes)


def _choose(chosen: dict[tuple, Destination], route: Route, target: Path) -> None:
    chosen.setdefault((route.remote, target), Destination(route.name, target.parent, target.name, route.to,
                                                          templated=route.template is not None,
                                                          remote=route.remote, route=route))


@dataclass(frozen=True)
class Verdict:
    """One rule's answer for one job, for ``bin/route --explain``."""
    route: Route
    failed: str | None = None       # the first condition that failed
    target: Path | None = None
    unsafe: str | None = None       # matched, but its destination cannot be built from this job


def evaluate(routes: Sequence[Route], facts: Facts) -> list[Verdict]:
    """Every rule's verdict, in rule order."""
    verdicts = []
    for route in routes:
        failed = route.failure(facts)
        if failed:
            verdicts.append(Verdict(route, failed=failed))
            continue
        try:
            verdicts.append(Verdict(route, target=route.target(facts)))
        except Unsafe as e:
            verdicts.append(Verdict(route, unsafe=str(e)))
    return verdicts


def paths_named(routes: Iterable[Route]) -> list[tuple[str, ...]]:
    """The dotted paths the rules read from job files: validation keeps these and drops the rest."""
    found = []
    for route in routes:
        found += [c.keys for c in route.match]
        if route.template:
            found += route.template.paths
        if route.rename:
            found += placeholders.field_paths(route.rename)
    return found


# --- compiling a [[route]] table ---------------------------------------------------------------

class RuleError(ValueError):
    """A rule's key cannot be used; ``key`` names it, str() says why."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def compile_route(table: Mapping[str, Any], timezone: str, resolve: Callable[[str], Path],
                  string_list: Callable[[Any], tuple[str, ...]]) -> Route:
    """A checked, compiled rule from its ``[[route]]`` table (name and to already checked to be
    non-empty strings). Raises RuleError naming the key."""
    fields: dict[str, Any] = {}
    for key in ("clients", "categories"):
        if key in table:
            values = _non_empty(key, _keyed(key, string_list, table[key]))
            fields[key] = frozenset(v.upper() for v in values)
    if "match" in table:
        fields["match"] = _conditions(table["match"])
    if "files" in table:
        globs = _non_empty("files", _keyed("files", string_list, table["files"]))
        fields["files"], fields["files_shown"] = _globs(globs), ", ".join(globs)
    if urls.is_remote(table["to"]):
        fields["remote"], path = _keyed("to", urls.split, table["to"])
        _keyed("to", urls.check_path, fields["remote"], path)
        to = _keyed("to", placeholders.destination, path, timezone, lambda p: Path(posixpath.normpath("/" + p.lstrip("/"))))
    else:
        to = _keyed("to", placeholders.destination, table["to"], timezone, resolve)
    if isinstance(to, placeholders.Template):
        fields["template"], to = to, to.base
    if "rename" in table:
        if not isinstance(table["rename"], str) or not table["rename"]:
            raise RuleError("rename", "expected a non-empty string")
        fields["rename"] = _keyed("rename", placeholders.file_name, table["rename"], timezone)
    if "hold" in table:
        if not isinstance(table["hold"], bool):
            raise RuleError("hold", f"expected true or false, got {table['hold']!r}")
        fields["hold"] = table["hold"]
    return Route(name=table["name"], to=to, **fields)


def _keyed(key: str, convert: Callable, *args) -> Any:
    try:
        return convert(*args)
    except RuleError:
        raise
    except ValueError as e:
        raise RuleError(key, str(e)) from None


def _non_empty(key: str, values: tuple) -> tuple:
    if not values:
        raise RuleError(key, "an empty list matches nothing; leave it out to match anything")
    return values


def _conditions(table: Any) -> tuple[Condition, ...]:
    if not isinstance(table, dict) or not table:
        raise RuleError("match", 'expected a table of dotted paths to lists of values, such as '
                                 '{ "JobSpecification.JobDetails.StudioCode" = ["LDN", "NYC"] }')
    conditions = []
    for path, values in _flatten(table):
        key = f"match {path}"
        keys = _keyed(key, placeholders.split_path, path)
        if not isinstance(values, list) or not values:
            raise RuleError(key, f"expected a non-empty list of the values it may have, got {values!r}")
        texts = []
        for value in values:
            text = None if isinstance(value, float) and value != value else placeholders.as_text(value)
            if text is None or not isinstance(value, (str, int, float, bool)):
                raise RuleError(key, f"expected strings, numbers or booleans, got {value!r}")
            texts.append(text)
        conditions.append(Condition(path, keys, frozenset(t.casefold() for t in texts), ", ".join(texts)))
    return tuple(conditions)


def _flatten(table: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """``{ "A.B" = [...] }`` and TOML's bare dotted keys ``{ A.B = [...] }`` (nested tables) alike."""
    out = []
    for key, value in table.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out += _flatten(value, path + ".")
        else:
            out.append((path, value))
    return out


def _globs(globs: tuple[str, ...]) -> re.Pattern:
    for glob in globs:
        if _FILE_GLOB_PROBLEM.search(glob):
            raise RuleError("files", f"{glob!r}: a glob matches the file name only, so it cannot hold '/'")
        if _unclosed_bracket(glob):
            raise RuleError("files", f"{glob!r}: '[' opens a set of characters that is never closed "
                                     "(write [[] for a literal [)")
    return re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in globs), re.IGNORECASE | re.DOTALL)


def _unclosed_bracket(glob: str) -> bool:
    """fnmatch quietly reads an unclosed ``[`` as itself; here it is more likely a typo."""
    i = 0
    while i < len(glob):
        if glob[i] == "[":
            j = i + 1
            if j < len(glob) and glob[j] in "!^":
                j += 1
            if j < len(glob) and glob[j] == "]":
                j += 1
            close = glob.find("]", j)
            if close < 0:
                return True
            i = close
        i += 1
    return False
