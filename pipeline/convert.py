"""One converter per kind of configuration value (after supervisor's datatypes.py).

Each takes the TOML value and returns the value the program uses, or raises ValueError with what
it expected and what it got; ``config.py`` adds the key's name.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import math
import re
import zoneinfo
from typing import Any, Callable, Mapping

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


# C0 and C1 control characters, DEL, and Unicode's line and paragraph separators. None belongs in
# an HTTP header, a mail header or a log line: a CR or LF there starts a header or line of its own.
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")

# An HTTP header name is a token (RFC 9110 5.6.2): anything else is refused by requests at send time.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def escape_control_characters(text: str) -> str:
    """``text`` on one line with nothing a terminal acts on: each control character written as its
    Python escape (\\n, \\x1b, \\x85, \\u2028), other unicode as it is; as the logs write them."""
    return CONTROL_CHARACTERS.sub(lambda m: ascii(m.group())[1:-1], text)


def control_character(text: str) -> str | None:
    """The first control character in ``text`` written as U+XXXX, or None when there is none."""
    found = CONTROL_CHARACTERS.search(text)
    return None if found is None else f"U+{ord(found.group()):04X}"


def header_value_problem(value: str) -> str | None:
    """Why ``value`` cannot be an HTTP header value, or None. Never quotes it: it may be a secret."""
    found = control_character(value)
    return f"contains the control character {found}" if found else None


def string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_type_name(value)}")
    return value


def address(value: Any) -> str:
    """An email address (or "Name <address>"): it goes into a mail header, so it must be one line."""
    value = string(value)
    found = control_character(value)
    if found:
        raise ValueError(f"contains the control character {found}, got {value!r}")
    return value


def address_list(value: Any) -> tuple[str, ...]:
    addresses = string_list(value)
    for one in addresses:
        address(one)
    return addresses


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a whole number of at least 1, got {value!r}")
    return value


def non_negative_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a whole number of at least 0, got {value!r}")
    return value


def non_negative_number(value: Any) -> float:
    # TOML has nan and inf floats: nan compares false with everything, so it slips past "< 0" (a
    # lease of nan broke every claim), and an infinite lease or interval never comes due.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"expected a finite number of at least 0, got {value!r}")
    return float(value)


def positive_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"expected a finite number above 0, got {value!r}")
    return float(value)


def port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"expected a port number from 1 to 65535, got {value!r}")
    return value


def listen_address(value: Any) -> tuple[str, int]:
    """ "host:port" (an IPv6 host in brackets: "[::1]:8750"), where a server listens."""
    found = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([A-Za-z0-9.-]+):(\d{1,5})", string(value))
    if not found or not 1 <= int(found.group(2) or found.group(4)) <= 65535:
        raise ValueError(f'expected "host:port" such as "127.0.0.1:8750", got {value!r}')
    return found.group(1) or found.group(3), int(found.group(2) or found.group(4))


_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*")


def host_names(value: Any) -> tuple[str, ...]:
    """Names a server answers to in the HTTP Host header: DNS names or IP addresses, without a port
    (an IPv6 address with or without its brackets), lower-cased as names compare."""
    names = []
    for text in string_list(value):
        bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
        try:
            names.append(str(ipaddress.ip_address(bare)))
            continue
        except ValueError:
            pass
        if len(text) > 253 or not _HOST_NAME.fullmatch(text):
            raise ValueError(f"{text!r} is not a host name (a name such as dashboard.example.com, or an IP "
                             "address, without a port)")
        names.append(text.lower())
    return tuple(names)


def env_name(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise ValueError(f"expected the name of an environment variable, got {value!r}")
    return value


def octal_mode(value: Any) -> int:
    """A permission mode written as an octal string, e.g. "0664"."""
    if not isinstance(value, str) or not re.fullmatch(r"0?[0-7]{3}", value):
        raise ValueError(f'expected an octal mode such as "0664", got {value!r}')
    return int(value, 8)


def header_name(value: Any) -> str:
    """An HTTP header's name ("" for none): letters, digits and dashes."""
    value = string(value)
    if value and not re.fullmatch(r"[A-Za-z0-9-]{1,64}", value):
        raise ValueError(f"{value[:80]!r} is not an HTTP header name (letters, digits and -, such as X-Remote-User)")
    return value


def networks(value: Any) -> tuple:
    """IP addresses or networks ("10.0.0.0/8"), as ipaddress network objects."""
    out = []
    for text in string_list(value):
        try:
            out.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ValueError(f"{text[:80]!r} is not an IP address or network (such as 127.0.0.1 or 10.0.0.0/8)") from None
    return tuple(out)


def string_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"expected a list of non-empty strings, got {value!r}")
    return tuple(value)


def done_suffix(value: Any) -> str:
    """``detect.done_suffix``: what a done marker adds to its job file's name ("" for none)."""
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    if "/" in value or any(ord(c) < 32 or ord(c) == 127 for c in value) or value.strip(".") == "" and value:
        raise ValueError(f"{value!r} cannot end a file name (no /, no control character, not only dots)")
    if value.lower() == ".json":
        raise ValueError("'.json' would make every job file a marker; use something like '.done'")
    return value


def dotted_path(value: Any) -> tuple[str, ...]:
    """A dotted path into a job file (``router.order_by``) as its keys; "" for none."""
    if not isinstance(value, str):
        raise ValueError(f"expected a string (a dotted path), got {_type_name(value)}")
    if not value:
        return ()
    keys = tuple(value.split("."))
    if any(not k or k != k.strip() or control_character(k) for k in keys):
        raise ValueError(f"{value!r} is not a dotted path such as JobSpecification.JobDetails.JobNumber")
    return keys


def choice(*allowed: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}, got {value!r}")
        return value
    return convert


def time_of_day(value: Any) -> _dt.time:
    try:
        return _dt.time.fromisoformat(string(value))
    except ValueError:
        raise ValueError(f'expected a time of day such as "00:00", got {value!r}') from None


def timezone(value: Any) -> str:
    try:
        zoneinfo.ZoneInfo(string(value))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r}") from None
    return value


def color(value: Any) -> str:
    """A CSS colour as #RGB or #RRGGBB: it goes into the report's styles, so nothing else is let in."""
    if not isinstance(value, str) or not re.fullmatch(r"#(?:[0-9a-fA-F]{3}){1,2}", value):
        raise ValueError(f'expected a colour such as "#1f2937", got {value!r}')
    return value


def url(value: Any) -> str:
    value = string(value)
    if value and not re.match(r"https?://[^\s/]+", value):
        raise ValueError(f"expected an http:// or https:// address, got {value!r}")
    return value


def alert_urls(value: Any) -> tuple[str, ...]:
    """Apprise URLs, each "env:NAME" (read at start: URLs carry tokens) or written out. A problem
    names the entry by its place, never by its text, which may be a secret."""
    urls = string_list(value)
    for i, text in enumerate(urls, 1):
        if text.startswith("env:"):
            env_name(text[4:])
        elif "://" not in text:
            raise ValueError(f'entry #{i} is neither "env:NAME" nor a URL such as "json://host/path" '
                             "(the value is not shown)")
        elif control_character(text):
            raise ValueError(f"entry #{i} contains the control character {control_character(text)} "
                             "(the value is not shown)")
    return urls


def window(value: Any) -> tuple[int, int] | None:
    """ "HH:MM-HH:MM" as minutes after midnight (None: the whole day); an end before the start runs
    overnight, and "24:00" is the end of the day."""
    found = re.fullmatch(r"(\d\d):(\d\d)-(\d\d):(\d\d)", string(value))
    h1, m1, h2, m2 = map(int, found.groups()) if found else (99, 0, 0, 0)
    if not (h1 < 24 and m1 < 60 and m2 < 60 and (h2 < 24 or (h2, m2) == (24, 0))):
        raise ValueError(f'expected a window such as "08:00-18:00", got {value!r}')
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if (start, end) == (0, 1440):
        return None
    if start == end % 1440:
        raise ValueError(f"the window {value!r} is empty: it starts when it ends")
    return start, end


def weekdays(value: Any) -> frozenset[int]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"expected a non-empty list of days such as [\"mon\", \"tue\"], got {value!r}")
    for day in value:
        if not isinstance(day, str) or day.lower() not in DAYS:
            raise ValueError(f"expected days among {', '.join(DAYS)}, got {day!r}")
    return frozenset(DAYS.index(day.lower()) for day in value)


def headers(value: Any) -> Mapping[str, str]:
    """HTTP headers; a value "env:NAME" is read from the environment at start (notifier.resolve_headers)."""
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError("expected a table of header names to string values")
    for name, text in value.items():
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a header name (letters, digits and !#$%&'*+-.^_`|~ only)")
        problem = header_value_problem(text)
        if problem:
            raise ValueError(f"the value of {name} {problem} (the value is not shown)")
    return dict(value)


def is_utf8(text: str) -> bool:
    """False for text holding bytes that are not UTF-8 (Python keeps them as lone surrogates: a
    file name read from disk, a value that came through one)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
