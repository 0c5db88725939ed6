"""The JSON Schema validator behind ``schemas.py``, bounded in time, loaded only where a
``[[schema]]`` is configured (importing jsonschema costs a program's start ~80 ms)
(docs/design.md#the-job-file-contract)."""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
import threading
import time
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urldefrag, urljoin, urlsplit
from urllib.request import url2pathname

import regex
from jsonschema import Draft202012Validator, FormatChecker, ValidationError
from jsonschema.exceptions import STRONG_MATCHES, WEAK_MATCHES, SchemaError, best_match
from jsonschema.validators import extend
from jsonschema_specifications import REGISTRY as META_SCHEMAS
from referencing import Registry, Resource
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

from . import strictjson

DRAFT = "https://json-schema.org/draft/2020-12/schema"
MESSAGE_LIMIT = 300         # characters of one error: a message quotes the value, which may be huge
_NOT_SCHEMAS = ("const", "enum", "default", "examples")     # keywords whose values are data


class SchemaProblem(ValueError):
    """A schema file that cannot be used; str() is the one-line reason."""


class TooSlow(Exception):
    """The job's time budget ran out; the text says where."""


def errors(validator, document: Any, deadline: float, limit: int) -> list[str]:
    """The errors of ``document`` (path: message), the most telling first, at most ``limit``;
    raises TooSlow when ``deadline`` (time.monotonic) passes."""
    _budget.deadline = deadline
    found: list[tuple[tuple, str]] = []
    try:
        for error in validator.iter_errors(document):
            # Only the line is kept: an error holds its message, which may quote a huge value.
            rank = (-len(error.path), error.validator not in WEAK_MATCHES, error.validator in STRONG_MATCHES)
            found.append((rank, _line(best_match([error]))))
            if len(found) >= limit:
                break
    finally:
        _budget.deadline = None
    if not found:
        return []
    best = max(range(len(found)), key=lambda i: found[i][0])     # as best_match ranks them
    return [found[best][1]] + [line for i, (_, line) in enumerate(found) if i != best]


def _line(error: ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path) or "the top level"
    message = " ".join(error.message.split())
    if len(message) > MESSAGE_LIMIT:
        message = message[:MESSAGE_LIMIT] + "..."
    return f"{path}: {message}"


# -- the bounded validator --------------------------------------------------------------------------

_budget = threading.local()      # the deadline of the check running in this thread


def _check_time(where: str = "") -> float | None:
    """Seconds left of the job's budget (None: no budget); raises TooSlow when none are."""
    deadline = getattr(_budget, "deadline", None)
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TooSlow(where or "the time limit")
    return left


@functools.lru_cache(maxsize=1024)
def _pattern(text: str) -> regex.Pattern:
    return regex.compile(text)


def _search(pattern: str, text: str) -> bool:
    try:
        return _pattern(pattern).search(text, timeout=_check_time(f"pattern {pattern!r}")) is not None
    except TimeoutError:
        raise TooSlow(f"pattern {pattern!r} on a value of {len(text):,} characters") from None


def _timed(keyword):
    """A keyword that first checks the job's time budget: a schema walking a large document stops."""
    def timed(validator, value, instance, schema):
        _check_time()
        return keyword(validator, value, instance, schema) or ()
    return timed


def _pattern_keyword(validator, pattern, instance, schema):
    if validator.is_type(instance, "string") and not _search(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(validator, patterns, instance, schema):
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(validator, allowed, instance, schema):
    if not validator.is_type(instance, "object"):
        return
    named, patterns = schema.get("properties", {}), schema.get("patternProperties", {})
    extras = [k for k in instance if k not in named and not any(_search(p, k) for p in patterns)]
    if validator.is_type(allowed, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], allowed, path=extra)
    elif not allowed and extras:
        shown = ", ".join(repr(k) for k in sorted(extras))
        yield ValidationError(f"additional properties are not allowed ({shown} "
                              f"{'was' if len(extras) == 1 else 'were'} unexpected)")


_LOOKUPS: dict[tuple[int, str], tuple[Any, Any]] = {}     # (resolver's id, $ref) -> (resolver, resolved)


def _ref(validator, ref, instance, schema):
    """``$ref`` with its lookups remembered: finding what a reference names is most of a ``$ref``'s
    cost (half a check against a schema whose items are ``$defs``), and a pure function of the
    resolver (immutable, over a registry that holds every document and fetches nothing) and the
    reference. The resolver is kept with its result, so its id cannot name another meanwhile."""
    resolver = validator._resolver
    key = (id(resolver), ref)
    hit = _LOOKUPS.get(key)
    if hit is None or hit[0] is not resolver:
        if len(_LOOKUPS) >= 4096:       # recursive schemas make a resolver per depth: stay bounded
            _LOOKUPS.clear()
        hit = _LOOKUPS[key] = (resolver, resolver.lookup(ref))
    resolved = hit[1]
    yield from validator.descend(instance, resolved.contents, resolver=resolved.resolver)


def _unique_items(validator, unique, instance, schema):
    """Linear, where jsonschema compares every pair of objects (minutes for a large array)."""
    if not unique or not validator.is_type(instance, "array"):
        return
    seen = set()
    for i, item in enumerate(instance):
        if i % 1000 == 999:
            _check_time("uniqueItems")
        key = json.dumps(_canonical(item), sort_keys=True, separators=(",", ":"))
        if key in seen:
            yield ValidationError(f"{instance!r} has non-unique elements")
            return
        seen.add(key)


def _canonical(value: Any) -> Any:
    """JSON Schema's equality as text: 1 and 1.0 are equal, true and 1 are not."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


# The keywords that descend into the instance or into other schemas: each looks at the time budget
# before it runs (the others do a bounded amount of work on one value, and cost a call more each).
_DESCENDING = ("properties", "patternProperties", "additionalProperties", "propertyNames", "dependentSchemas",
               "items", "prefixItems", "contains", "unevaluatedItems", "unevaluatedProperties",
               "allOf", "anyOf", "oneOf", "not", "if", "$ref", "$dynamicRef")
_BOUNDED = extend(Draft202012Validator, {
    **{name: _timed(Draft202012Validator.VALIDATORS[name]) for name in _DESCENDING},
    "$ref": _timed(_ref), "pattern": _pattern_keyword, "patternProperties": _timed(_pattern_properties),
    "additionalProperties": _timed(_additional_properties), "uniqueItems": _unique_items,
})

_EVOLVED: dict[tuple[int, int, int], tuple[Any, Any, Any, Any]] = {}   # ids -> (parent, schema, resolver, child)
_plain_descend = _BOUNDED.descend


def _descend(self, instance, schema, path=None, schema_path=None, resolver=None):
    """jsonschema's descend with the validator it makes for a subschema remembered. Making it (a
    resource, a resolver, a new validator object) was two thirds of checking a job, and it is a pure
    function of the parent validator (immutable), the subschema and the resolver given, which the
    compiled schema keeps alive; the three are kept with the result, so an id cannot name another."""
    if schema is True or schema is False or self._ref_resolver is not None:
        yield from _plain_descend(self, instance, schema, path, schema_path, resolver)
        return
    key = (id(self), id(schema), id(resolver))
    hit = _EVOLVED.get(key)
    if hit is None or hit[0] is not self or hit[1] is not schema or hit[2] is not resolver:
        if len(_EVOLVED) >= 4096:       # as _LOOKUPS: bounded whatever the schema's shape
            _EVOLVED.clear()
        if resolver is None:
            child = self.evolve(schema=schema, _resolver=self._resolver.in_subresource(
                DRAFT202012.create_resource(schema)))
        else:
            child = self.evolve(schema=schema, _resolver=resolver)
        hit = _EVOLVED[key] = (self, schema, resolver, child)
    for error in hit[3].iter_errors(instance):     # what descend runs, with the validator's keywords listed once
        if path is not None:
            error.path.appendleft(path)
        if schema_path is not None:
            error.schema_path.appendleft(schema_path)
        yield error


_BOUNDED.descend = _descend         # on our class only (extend made it); jsonschema's own stays as it is


# -- formats ----------------------------------------------------------------------------------------

_FORMATS = FormatChecker()
_TIME = r"(\d{2}):(\d{2}):(\d{2})(?:\.\d+)?(?:[Zz]|[+-](\d{2}):(\d{2}))"
_DATE_TIME = re.compile(rf"(\d{{4}}-\d{{2}}-\d{{2}})[Tt]{_TIME}", re.ASCII)
_TIME_ONLY = re.compile(_TIME, re.ASCII)


def _time_ok(match: re.Match, first: int) -> bool:
    hour, minute, second, off_hour, off_minute = match.groups()[first:]
    return (int(hour) < 24 and int(minute) < 60 and int(second) <= 60
            and (off_hour is None or int(off_hour) < 24 and int(off_minute) < 60))


@_FORMATS.checks("date-time", raises=ValueError)
def _is_date_time(value: object) -> bool:
    """RFC 3339, as the draft says (jsonschema checks it only with an optional package)."""
    if not isinstance(value, str):
        return True
    match = _DATE_TIME.fullmatch(value)
    if not match:
        return False
    dt.date.fromisoformat(match.group(1))       # ValueError: no such day
    return _time_ok(match, 1)


@_FORMATS.checks("time", raises=ValueError)
def _is_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    match = _TIME_ONLY.fullmatch(value)
    return bool(match) and _time_ok(match, 0)


# -- loading ------------------------------------------------------------------------------------------

def _read(path: Path) -> Any:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise SchemaProblem("no such file") from None
    except IsADirectoryError:
        raise SchemaProblem("is a folder, not a file") from None
    except OSError as e:
        raise SchemaProblem(f"cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise SchemaProblem(f"not UTF-8 text (byte at offset {e.start})") from None
    try:
        return strictjson.loads(text, strictjson.ALL)
    except json.JSONDecodeError as e:
        raise SchemaProblem(f"not valid JSON: {e.msg} (line {e.lineno} column {e.colno})") from None
    except strictjson.Refused as e:
        raise SchemaProblem(f"not valid JSON: {e}") from None
    except RecursionError:
        raise SchemaProblem("not valid JSON: nested too deeply") from None


def _check(document: Any) -> None:
    """A draft 2020-12 schema, or SchemaProblem saying what is wrong."""
    if isinstance(document, dict) and str(document.get("$schema", DRAFT)).rstrip("#") != DRAFT:
        raise SchemaProblem(f"$schema is {document['$schema']!r}: only JSON Schema draft 2020-12 ({DRAFT}) "
                            "is supported")
    try:
        Draft202012Validator.check_schema(document)
    except SchemaError as e:            # check_schema raises the best match already
        where = ".".join(str(p) for p in e.absolute_path) or "the top level"
        raise SchemaProblem(f"not a valid JSON Schema: {where}: {' '.join(e.message.split())[:200]}") from None
    if _uses(document, "unevaluatedProperties") and _uses(document, "patternProperties"):
        # jsonschema matches patternProperties for unevaluatedProperties with Python's re, which
        # no time limit can bound.
        raise SchemaProblem("unevaluatedProperties together with patternProperties is not supported "
                            "(write additionalProperties instead)")


def _uses(node: Any, keyword: str) -> bool:
    if isinstance(node, dict):
        return keyword in node or any(_uses(v, keyword) for k, v in node.items() if k not in _NOT_SCHEMAS)
    if isinstance(node, list):
        return any(_uses(v, keyword) for v in node)
    return False


def _compile_patterns(node: Any) -> None:
    """Compile every pattern now, as the regex module will run it: a job never meets a bad one."""
    if isinstance(node, dict):
        patterns = [node["pattern"]] if isinstance(node.get("pattern"), str) else []
        if isinstance(node.get("patternProperties"), dict):
            patterns += list(node["patternProperties"])
        for pattern in patterns:
            try:
                _pattern(pattern)
            except regex.error as e:
                raise SchemaProblem(f"pattern {pattern!r} cannot be compiled: {e}") from None
        for key, value in node.items():
            if key not in _NOT_SCHEMAS:
                _compile_patterns(value)
    elif isinstance(node, list):
        for value in node:
            _compile_patterns(value)


def _references(node: Any, base: str) -> Iterator[tuple[str, str]]:
    """(base URI, reference) of every ``$ref`` and ``$dynamicRef``, ``$id`` changing the base."""
    if isinstance(node, dict):
        if isinstance(node.get("$id"), str):
            base = urljoin(base, node["$id"])
        for keyword in ("$ref", "$dynamicRef"):
            if isinstance(node.get(keyword), str):
                yield base, node[keyword]
        for key, value in node.items():
            if key not in _NOT_SCHEMAS:
                yield from _references(value, base)
    elif isinstance(node, list):
        for value in node:
            yield from _references(value, base)


def _ids(node: Any, base: str, out: set[str]) -> None:
    """The documents a schema holds itself: its own URI and every ``$id`` in it."""
    if isinstance(node, dict):
        if isinstance(node.get("$id"), str):
            base = urljoin(base, node["$id"])
            out.add(urldefrag(base).url)
        for key, value in node.items():
            if key not in _NOT_SCHEMAS:
                _ids(value, base, out)
    elif isinstance(node, list):
        for value in node:
            _ids(value, base, out)


def _refuse(uri: str) -> Resource:
    raise LookupError(f"{uri} is not loaded")       # every reference was read at load; nothing is fetched


def compile_file(path: Path):
    """The bounded validator of a schema file, its references read and resolved; raises SchemaProblem."""
    root = path.resolve().as_uri()
    document = _read(path)
    _check(document)
    if isinstance(document, dict):
        document = {"$id": root, **document}        # relative references resolve against the file
    documents = {root: document}
    known = {root}
    _ids(document, root, known)
    todo, pairs = [root], []
    while todo:                         # every file referenced, and the files they reference
        uri = todo.pop()
        for base, ref in _references(documents[uri], uri):
            pairs.append((base, ref))
            target = urldefrag(urljoin(base, ref)).url
            if target in known or target in META_SCHEMAS:
                continue
            parts = urlsplit(target)
            if parts.scheme != "file" or parts.netloc not in ("", "localhost"):     # file://host/ is a share
                where = "" if target == urldefrag(ref).url else f" ({target})"
                raise SchemaProblem(f"$ref {ref!r} is remote{where}: schemas are never fetched; save it beside "
                                    "the schema file and refer to it by its file name")
            local = Path(url2pathname(parts.path))
            try:
                referenced = _read(local)
                _check(referenced)
            except SchemaProblem as e:
                raise SchemaProblem(f"$ref {ref!r}: {local}: {e}") from None
            documents[target] = referenced
            known.add(target)
            _ids(referenced, target, known)
            todo.append(target)
    registry = Registry(retrieve=_refuse).with_resources(
        (uri, Resource.from_contents(doc, default_specification=DRAFT202012)) for uri, doc in documents.items()
    ).crawl()
    for doc in documents.values():
        _compile_patterns(doc)
    for base, ref in pairs:             # a reference to nothing is found now, not by the first job
        try:
            registry.resolver(base_uri=base).lookup(ref)
        except (Unresolvable, LookupError):
            raise SchemaProblem(f"$ref {ref!r} cannot be resolved (nothing in the schema or its files "
                                "has that address)") from None
    return _BOUNDED(document, registry=registry, format_checker=_FORMATS)
