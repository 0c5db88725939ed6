"""Job file schemas: ``[[schema]]`` tables add requirements per client or category, checked at
``validate`` after the built-in checks (docs/design.md#the-job-file-contract).

Each schema file is a JSON Schema draft 2020-12 document, read, checked and compiled once, when
the configuration is loaded; a missing file, a file that is not JSON or not a valid schema, or a
``$ref`` that could not be resolved without the network is a configuration error naming the file.
Nothing is ever fetched: a ``$ref`` resolves inside the document, or to a local file relative to
the schema file, read at load too.

A schema is checked by ``jsonschema`` with format checks on, and bounded: its ``pattern`` and
``patternProperties`` run on the ``regex`` module with a time limit, every keyword that descends
looks at the job's time budget (``TIME_LIMIT``), and ``uniqueItems`` is linear, so no schema can stall a
router; a job that needs longer fails with the reason. The whole document is built only for jobs
a schema may apply to, and only up to ``MAX_VALUES`` values, so memory stays bounded too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

from . import strictjson
from .validation import Invalid, JobDetails, parse

TIME_LIMIT = 2.0            # seconds a job's schema checks may take, all its schemas together
MAX_VALUES = 1_000_000      # values a document checked against a schema may hold (each ~100 bytes built)
MAX_ERRORS = 20             # errors listed in the FAILED sidecar


class SchemaProblem(ValueError):
    """A schema file that cannot be used; str() is the one-line reason (config names the file)."""


class Failed(Invalid):
    """The job breaks a schema that applies to it: str() is the line for people, ``errors`` every
    error found (up to MAX_ERRORS), each a line of its own, for the FAILED sidecar."""

    def __init__(self, line: str, errors: list[str]):
        super().__init__(line)
        self.errors = errors


@dataclass(frozen=True)
class Schema:
    """A compiled ``[[schema]]`` table."""
    where: str                                  # "[[schema]] #1"
    shown: str                                  # the file as the configuration writes it
    path: Path
    clients: frozenset[str] | None = None      # upper-cased; None applies to any client
    categories: frozenset[str] | None = None   # upper-cased; None applies to any category
    validator: Any = field(default=None, compare=False, repr=False)

    @property
    def label(self) -> str:
        return f"{self.where} {self.shown}"

    def may_apply(self, client_folder: str) -> bool:
        """Whether it may apply to a job of this folder (ClientCode must name its folder)."""
        return self.clients is None or client_folder.upper() in self.clients

    def failure(self, details: JobDetails) -> str | None:
        """Why it does not apply to the job, in one line; None when it does."""
        if self.clients is not None and details.client_code not in self.clients:
            return f"clients: {details.client_code} is not one of {', '.join(sorted(self.clients))}"
        category = details.job_category.upper()
        if self.categories is not None and category not in self.categories:
            return f"categories: {category} is not one of {', '.join(sorted(self.categories))}"
        return None


def compile_schema(where: str, shown: str, path: Path, clients: Iterable[str] | None = None,
                   categories: Iterable[str] | None = None) -> Schema:
    """Read, check and compile a schema file; raises SchemaProblem."""
    from .schema_validator import compile_file      # jsonschema's import: only where a schema is configured
    upper = lambda names: None if names is None else frozenset(n.upper() for n in names)
    try:
        validator = compile_file(path)
    except ValueError as e:
        raise SchemaProblem(str(e)) from None
    return Schema(where, shown, path, upper(clients), upper(categories), validator)


# -- checking jobs --------------------------------------------------------------------------------

def may_apply(schemas: Iterable[Schema], client_folder: str) -> bool:
    return any(s.may_apply(client_folder) for s in schemas)


def parse_job(data: bytes, client_folder: str, keep: dict, schemas: tuple[Schema, ...]) -> JobDetails:
    """``validation.parse``, then every schema that applies; raises Invalid (Failed for a schema).

    Without a schema for the folder the document is parsed as ever, keeping only ``keep``; with
    one it is built whole for the schemas, then cut down to ``keep`` for the rest of the batch."""
    if not schemas or not may_apply(schemas, client_folder):
        return parse(data, client_folder, keep)
    details = parse_whole(data, client_folder)
    applying = [s for s in schemas if s.failure(details) is None]
    problems = check(applying, details.document)
    if problems:
        raise Failed(problems[0], problems)
    return replace(details, document=strictjson.prune(details.document, keep))


def parse_whole(data: bytes, client_folder: str) -> JobDetails:
    """The job with its whole document, for schemas; raises Invalid, also when it holds more than
    MAX_VALUES values (a cheap count of what opens or separates a value, before anything is built)."""
    if len(data) > MAX_VALUES:
        values = data.count(b",") + data.count(b"{") + data.count(b"[")
        if values > MAX_VALUES:
            raise Invalid(f"too large to check against a [[schema]]: about {values:,} values, over the "
                          f"{MAX_VALUES:,} a schema check builds in memory")
    return parse(data, client_folder, strictjson.ALL)


def check(schemas: Iterable[Schema], document: Any) -> list[str]:
    """The errors of ``document`` against ``schemas``, each one line (the most telling error of
    the first schema broken first), at most MAX_ERRORS; empty when it passes them all."""
    problems: list[str] = []
    deadline = time.monotonic() + TIME_LIMIT
    for schema in schemas:
        problems += verdict(schema, document, deadline, MAX_ERRORS - len(problems))
        if len(problems) >= MAX_ERRORS:
            break
    return problems


def verdict(schema: Schema, document: Any, deadline: float | None = None, limit: int = MAX_ERRORS) -> list[str]:
    """The errors of ``document`` against one schema (its most telling first); [] when it passes."""
    from .schema_validator import TooSlow, errors
    deadline = time.monotonic() + TIME_LIMIT if deadline is None else deadline
    try:
        return [f"{line} ({schema.label})" for line in errors(schema.validator, document, deadline, limit)]
    except TooSlow as e:
        return [f"checking the job took longer than {TIME_LIMIT:g} s and was stopped at {e} ({schema.label})"]


