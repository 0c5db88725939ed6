"""Strict, memory-bounded JSON parsing of job files (docs/design.md#validation-and-routing, docs/design.md#bad-input).

Python's ``json.loads`` accepts what a job file must not hold (``NaN`` and ``Infinity``, duplicate
keys, integers too long for ``int()``) and builds the whole document: a 49 MiB file of small
objects took 1.4 GB. Here the document is checked whole but only the parts named by ``wanted`` are
kept, so memory stays near the size of the text whatever its shape.

How: small containers ("leaves": no container inside, at most ``WINDOW`` characters) are parsed by
the C decoder in one call, with hooks that enforce the rules; everything above them is walked here
one token at a time with an explicit stack (no recursion), keeping only what ``wanted`` names. A
file that fits in one window is decoded by the C decoder at once. Both ways apply the same hooks,
so a file gets the same verdict whichever way it is read.

``wanted`` is a tree of object keys: a dict descends into that key's object, or into that item of
an array when the key is an index (``"0"``: the array is kept up to the last item named, the
others as None); ``KEEP`` keeps the value if it is a scalar, and an empty stand-in of the same kind
(``{}`` or ``[]``) if not, which is all validation needs to say what it is; ``ALL`` keeps the whole
value (a job a ``[[schema]]`` checks). Everything else is checked and dropped.
"""

from __future__ import annotations

import functools
import json
import math
import re
from json.decoder import scanstring
from typing import Any

KEEP = True
ALL = object()                  # a wanted that keeps the value whole, every container below it too
WINDOW = 64 * 1024              # characters: the most the C decoder is given at once
MAX_DEPTH = 512                 # nesting levels walked here (the C decoder stops near 1,000)
MAX_NUMBER_CHARS = 100          # a longer number is not a job's value; int() refuses > 4,300 digits
MAX_OPEN_KEYS = 200_000         # keys remembered at once to find duplicates (about 20 MB)

_WS = re.compile(r"[ \t\n\r]*")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")


def _patterns(levels: int) -> tuple[dict, dict]:
    """Regular expressions that find, fast and without backtracking, what the C decoder can take
    in one call: containers nested at most ``levels`` deep, and runs of such members ending with a
    comma. They only pick the way; a text they pass that is not JSON is refused by the decoder."""
    string = r'"(?:[^"\\]++|\\.)*+"'
    kinds = {"{": (r"\{", r"\}"), "[": (r"\[", r"\]")}
    small = {k: rf'{o}(?:[^{{}}\[\]"]++|{string})*+{c}' for k, (o, c) in kinds.items()}
    for _ in range(levels - 1):
        inner = f"{small['{']}|{small['[']}"
        small = {k: rf'{o}(?:[^{{}}\[\]"]++|{string}|{inner})*+{c}' for k, (o, c) in kinds.items()}
    ws = r"[ \t\n\r]*+"
    value = rf"(?:{string}|[-+.0-9eE]++|true|false|null|{small['{']}|{small['[']})"
    runs = {"[": rf"(?:{ws}{value}{ws},)++", "{": rf"(?:{ws}{string}{ws}:{ws}{value}{ws},)++"}
    compiled = lambda patterns: {k: re.compile(v, re.S) for k, v in patterns.items()}
    return compiled(small), compiled(runs)


@functools.lru_cache(maxsize=None)
def _window_patterns() -> tuple[dict, dict]:
    """(small containers, runs), compiled at the first file larger than a window: compiling
    them takes tens of milliseconds that a program's start, and most job files, do without."""
    return _patterns(3)


_CLOSE = {"{": "}", "[": "]"}
_LITERALS = (("true", True), ("false", False), ("null", None))


class Refused(ValueError):
    """Well-formed JSON that a job file must not hold; str() is the one-line reason."""


def _number(text: str) -> None:
    if len(text) > MAX_NUMBER_CHARS:
        raise Refused(f"a number of {len(text):,} characters (at most {MAX_NUMBER_CHARS} are allowed)")


def _int(text: str) -> int:
    _number(text)
    return int(text)


def _float(text: str) -> float:
    _number(text)
    value = float(text)
    if not math.isfinite(value):
        raise Refused(f"the number {text} is too large")
    return value


def _constant(name: str) -> None:
    raise Refused(f"{name} is not allowed (not standard JSON)")


def _object(pairs: list[tuple[str, Any]]) -> dict:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise Refused(f"duplicate key {key!r} in an object")
            seen.add(key)
    return result


_CHECKED = json.JSONDecoder(object_pairs_hook=_object, parse_int=_int, parse_float=_float,
                            parse_constant=_constant, strict=True)
# Calling Python for every number costs 5x: numbers are checked one by one only in a text that
# holds one that may be refused (a long run of number characters, or an exponent of three digits
# or more). Seen through _NUMBER_CHARS, such a text holds "0" * 101 or "e000"; a false alarm
# (digits in a string) only costs time.
_FAST = json.JSONDecoder(object_pairs_hook=_object, parse_constant=_constant, strict=True)
_NUMBER_CHARS = str.maketrans(dict.fromkeys("-+.0123456789", "0") | {"E": "e"})


def _decoder(text: str) -> json.JSONDecoder:
    seen = text.translate(_NUMBER_CHARS)
    return _CHECKED if "0" * (MAX_NUMBER_CHARS + 1) in seen or "e000" in seen else _FAST


def loads(text: str, wanted: dict) -> Any:
    """The parts of ``text`` that ``wanted`` names; raises Refused, or json.JSONDecodeError when the
    text is not JSON (its ``msg`` and position as ``json.loads`` gives them), or RecursionError."""
    if len(text) <= WINDOW:
        value, end = _decoder(text).raw_decode(text, _WS.match(text).end())
        _end(text, end)
        return _prune(value, wanted)
    return _Walk(text, _decoder(text)).document(wanted)


def _end(text: str, pos: int) -> None:
    pos = _WS.match(text, pos).end()
    if pos != len(text):
        raise json.JSONDecodeError("Extra data", text, pos)


def prune(value: Any, wanted: Any) -> Any:
    """What ``wanted`` names of a value parsed whole (``ALL``), as ``loads`` would have kept it."""
    return _prune(value, wanted)


def _prune(value: Any, wanted: Any) -> Any:
    if wanted is ALL:
        return value
    if isinstance(value, dict):
        if wanted is KEEP:
            return {}
        return {k: _prune(value[k], w) for k, w in wanted.items() if k in value}
    if isinstance(value, list):
        out: list = []
        if wanted is not KEEP:
            for i, item in enumerate(value[:_last_index(wanted) + 1]):
                _keep_item(out, i, item, wanted)
        return out
    return value


def _last_index(wanted: dict) -> int:
    """The highest array index ``wanted`` names; -1 when it names none."""
    return max((int(k) for k in wanted if k.isascii() and k.isdigit() and str(int(k)) == k), default=-1)


def _keep_item(out: list, index: int, item: Any, wanted: dict) -> None:
    """Put ``item`` at ``index`` of ``out`` if ``wanted`` names it (the items before it as None)."""
    w = wanted.get(str(index))
    if w is not None:
        out.extend([None] * (index - len(out)))
        out.append(_prune(item, w))


class _Frame:
    """One open container above the leaves."""
    __slots__ = ("kind", "wanted", "out", "keys", "key", "count")

    def __init__(self, kind: str, wanted: Any):
        self.kind = kind
        self.wanted = wanted        # a dict of keys to keep, KEEP (a stand-in only) or None (drop)
        self.out = ({} if kind == "{" else []) if wanted is not None else None
        self.keys: set[str] | None = set() if kind == "{" else None
        self.key: str | None = None
        self.count = 0              # an array's items so far: the index of the next one

    def child(self) -> Any:
        if self.wanted is ALL:
            return ALL
        if isinstance(self.wanted, dict):
            return self.wanted.get(self.key if self.kind == "{" else str(self.count))
        return None

    def add(self, value: Any) -> None:
        if self.kind == "[":
            if self.wanted is ALL or isinstance(self.wanted, dict) and str(self.count) in self.wanted:
                self.out.extend([None] * (self.count - len(self.out)))
                self.out.append(value)      # already pruned by the child's own wanted
            self.count += 1
        elif self.wanted is ALL or isinstance(self.wanted, dict) and self.key in self.wanted:
            self.out[self.key] = value


class _Walk:
    def __init__(self, text: str, decoder: json.JSONDecoder, window: int = WINDOW):
        self.text = text
        self.decoder = decoder
        self.window = window
        self.open_keys = 0

    def error(self, message: str, pos: int) -> json.JSONDecodeError:
        return json.JSONDecodeError(message, self.text, pos)

    def document(self, wanted: dict) -> Any:
        text, stack = self.text, []
        pos = _WS.match(text).end()
        while True:
            value, pos, frame = self.value(pos, wanted, len(stack))
            if frame is not None:               # a big container opened: parse its first member
                stack.append(frame)
                pos = self.member(frame, self.run(frame, pos))
                wanted = frame.child()
                continue
            while True:                          # a value is complete: hand it to its container
                if not stack:
                    _end(text, pos)
                    return value
                frame = stack[-1]
                frame.add(value)
                pos = _WS.match(text, pos).end()
                char = text[pos:pos + 1]
                if char == ",":
                    pos = self.member(frame, self.run(frame, _WS.match(text, pos + 1).end()))
                    wanted = frame.child()
                    break
                if char != _CLOSE[frame.kind]:
                    raise self.error("Expecting ',' delimiter", pos)
                stack.pop()
                if frame.keys is not None:
                    self.open_keys -= len(frame.keys)
                value, pos = frame.out, pos + 1

    def value(self, pos: int, wanted: Any, depth: int) -> tuple[Any, int, _Frame | None]:
        """The value at ``pos``, and where it ends; or a new frame when it opens a big container."""
        text = self.text
        char = text[pos:pos + 1]
        if char in ("{", "["):
            small = _window_patterns()[0][char].match(text, pos, pos + self.window)
            if small:
                value, end = self.decoder.raw_decode(text, pos)
                return _prune(value, wanted) if wanted is not None else None, end, None
            if depth >= MAX_DEPTH:
                raise RecursionError
            frame = _Frame(char, wanted)
            after = _WS.match(text, pos + 1).end()
            if text[after:after + 1] == _CLOSE[char]:
                return frame.out, after + 1, None
            return None, after, frame
        if char == '"':
            string, end = scanstring(text, pos + 1, True)
            return string, end, None
        for word, literal in _LITERALS:
            if text.startswith(word, pos):
                return literal, pos + len(word), None
        for word in ("NaN", "Infinity", "-Infinity"):
            if text.startswith(word, pos):
                _constant(word)
        match = _NUMBER.match(text, pos)
        if not match:
            raise self.error("Expecting value", pos)
        number = match.group()
        return (_float(number) if match.group(1) or match.group(2) else _int(number)), match.end(), None

    def run(self, frame: _Frame, pos: int) -> int:
        """Take the small members from ``pos`` on, up to a comma, in one call of the C decoder;
        returns where the members it did not take start (``pos`` if none)."""
        text = self.text
        match = _window_patterns()[1][frame.kind].match(text, pos, pos + self.window)
        if not match:
            return pos
        body = text[pos:match.end() - 1]
        try:
            value = self.decoder.decode(frame.kind + body + _CLOSE[frame.kind])
        except json.JSONDecodeError:
            return pos          # walked member by member instead, which says where the error is
        if frame.kind == "{":
            for key in value:
                self.remember(frame, key)
            if frame.wanted is ALL:
                frame.out.update(value)
            elif isinstance(frame.wanted, dict):
                frame.out.update((k, _prune(value[k], w)) for k, w in frame.wanted.items() if k in value)
        else:
            if frame.wanted is ALL:
                frame.out.extend(value)
            elif isinstance(frame.wanted, dict):
                for i, item in enumerate(value, frame.count):
                    _keep_item(frame.out, i, item, frame.wanted)
            frame.count += len(value)
        return _WS.match(text, match.end()).end()

    def remember(self, frame: _Frame, key: str) -> None:
        if key in frame.keys:
            raise Refused(f"duplicate key {key!r} in an object")
        if self.open_keys >= MAX_OPEN_KEYS:
            raise Refused(f"more than {MAX_OPEN_KEYS:,} keys in open objects at once")
        frame.keys.add(key)
        self.open_keys += 1

    def member(self, frame: _Frame, pos: int) -> int:
        """For an object, read ``"key":`` at ``pos``; returns where the member's value starts."""
        if frame.kind == "[":
            return pos
        text = self.text
        if text[pos:pos + 1] != '"':
            raise self.error("Expecting property name enclosed in double quotes", pos)
        key, pos = scanstring(text, pos + 1, True)
        pos = _WS.match(text, pos).end()
        if text[pos:pos + 1] != ":":
            raise self.error("Expecting ':' delimiter", pos)
        # After the ':' check: a duplicate key with no ':' is not JSON, as the C decoder says.
        self.remember(frame, key)
        frame.key = key
        return _WS.match(text, pos + 1).end()


# A value cut short at the end of a text: a number's start or a literal's (``-``, ``12.``, ``1e+``,
# ``tr``, ``nul``), where the decoder stops with "Expecting value" or a delimiter.
_CUT_TOKEN = re.compile(r"(?:-|-?[0-9]*\.?[0-9]*(?:[eE][-+]?[0-9]*)?|t(?:ru?)?|f(?:a(?:ls?)?)?|n(?:ul?)?)[ \t\n\r]*")
# A \uXXXX escape cut short, or one of a surrogate pair whose second half is cut (from the "u").
_CUT_ESCAPE = re.compile(r"u[0-9a-fA-F]{0,4}(?:\\(?:u[0-9a-fA-F]{0,4})?)?")


def ends_early(data: bytes) -> bool:
    """Whether ``data`` is the start of a JSON text that stops inside a value (or is empty or only
    whitespace): what a file still being written looks like, where a syntax error in the middle
    is simply wrong. Only a text that failed to parse is asked."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.reason == "unexpected end of data"        # a character cut at the end
    if not text.strip():
        return True
    try:
        loads(text, {})
    except json.JSONDecodeError as e:
        # An unterminated string ran to the end whatever it says of where it started.
        if e.msg.startswith("Unterminated string"):
            return True
        cut = _CUT_ESCAPE if e.msg.startswith("Invalid \\uXXXX") else _CUT_TOKEN
        return cut.fullmatch(text, e.pos) is not None
    except (Refused, RecursionError):
        return False
    return False
