"""What the dashboard takes from a request, checked in one place: every path, query and form value.

A value the pages cannot use is refused before it reaches a query, with ``BadParameter``: a 400
whose one line names the parameter and says what was wrong. What is refused, and why:

- ids and page keys that are not ASCII digits: ``str.isdigit()`` is true for '²', which ``int()``
  refuses, and ``int()`` refuses 5,000 digits too; or that are past 2**63 - 1, which SQLite cannot
  bind (PostgreSQL's BIGINT stops there as well);
- searched text longer than a file name could match, or holding a control character: PostgreSQL
  cannot take a NUL in a string at all, and no search needs one;
- a state or step that is not one, and a time that is not an ISO date or date and time.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Mapping

from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import BadRequest
from werkzeug.routing import BaseConverter

from . import queries
from ..convert import control_character
from ..requeue import utc_time
from ..states import STATES, STEPS

ID_MAX = 2**63 - 1          # the largest id both engines can store and compare: a signed 64-bit integer
TEXT_MAX = 255              # characters of a name or client searched: a file name has at most 255 bytes
TIME_MAX = 64               # characters of a date and time, its zone and fractions included
IDS_MAX = 1000              # ids one requeue may name (the pages send one)


class BadParameter(BadRequest):
    """A request value the dashboard cannot use; its description is the one line shown."""

    def __init__(self, name: str, problem: str):
        super().__init__(f"{name}: {problem}")


def _shown(value: str) -> str:
    """The value as it may be quoted in the one line: escaped, and short."""
    return repr(value[:40] + "…" if len(value) > 40 else value)


def whole_number(name: str, value: str) -> int:
    """An id or a page key: 0 to ID_MAX, in ASCII digits."""
    if not (value.isascii() and value.isdigit()) or len(value) > len(str(ID_MAX)) or int(value) > ID_MAX:
        raise BadParameter(name, f"expected a whole number from 0 to {ID_MAX}, got {_shown(value)}")
    return int(value)


def text(name: str, value: str, limit: int = TEXT_MAX) -> str:
    """Text matched against the job table (part of a file name, a client), or a line for the audit
    trail (a reason, with its own ``limit``)."""
    if len(value) > limit:
        raise BadParameter(name, f"at most {limit} characters, got {len(value)}")
    found = control_character(value)
    if found:
        raise BadParameter(name, f"contains the control character {found}")
    return value


def one_of(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value and value not in allowed:
        raise BadParameter(name, f"expected one of {', '.join(allowed)}, got {_shown(value)}")
    return value


def time(name: str, value: str) -> float | None:
    """A time in the form ``bin/requeue --since`` takes, or None when empty."""
    if not value:
        return None
    if len(value) > TIME_MAX:
        raise BadParameter(name, f"at most {TIME_MAX} characters, got {len(value)}")
    try:
        return utc_time(value)
    except argparse.ArgumentTypeError as e:
        raise BadParameter(name, str(e)) from None


def search(args: Mapping[str, str], state: str = "") -> queries.Search:
    """The filters of /jobs (``state`` fixed for /failed, which then ignores the parameter)."""
    before = args.get("before", "")
    return queries.Search(q=text("q", args.get("q", "")), client=text("client", args.get("client", "")).strip(),
                          state=state or one_of("state", args.get("state", ""), STATES),
                          step=one_of("step", args.get("step", ""), STEPS),
                          since=time("since", args.get("since", "")),
                          before=whole_number("before", before) if before else None)


@dataclass(frozen=True)
class RequeueForm:
    """What a requeue POST chooses, as ``bin/requeue``'s filters."""
    ids: tuple[int, ...]
    client: str
    step: str
    since: float | None
    since_text: str
    confirmed: bool


def requeue_form(form: MultiDict) -> RequeueForm:
    given = form.getlist("id")
    if len(given) > IDS_MAX:
        raise BadParameter("id", f"at most {IDS_MAX} ids in one requeue, got {len(given)}")
    since_text = form.get("since", "")
    return RequeueForm(ids=tuple(whole_number("id", i) for i in given),
                       client=text("client", form.get("client", "")).strip(),
                       step=one_of("step", form.get("step", ""), STEPS),
                       since=time("since", since_text), since_text=since_text,
                       confirmed=form.get("confirm") == "yes")


class JobId(BaseConverter):
    """``<job:job_id>`` in a route: a job's id, refused as a 400 like any other bad value (a
    werkzeug converter's own refusal would be a 404, as though the page did not exist)."""

    def to_python(self, value: str) -> int:
        return whole_number("job id", value)

    def to_url(self, value: int) -> str:
        return str(value)
