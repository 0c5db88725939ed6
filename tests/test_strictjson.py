"""The strict, memory-bounded JSON parser (pipeline/strictjson.py): the same verdict as the C
decoder on every text, whichever way it is read, and memory near the size of the text."""

import json
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, settings, strategies as st

from pipeline import strictjson
from pipeline.validation import Invalid, parse

# "L" and "c" also name array items by index, as the routing rules' dotted paths do (Items.0.Code).
WANTED = {"a": strictjson.KEEP, "J": {"b": strictjson.KEEP, "c": {"d": strictjson.KEEP, "1": strictjson.KEEP}},
          "L": {"0": strictjson.KEEP, "2": {"b": strictjson.KEEP, "0": {"a": strictjson.KEEP}}}}


def verdict(text: str, window: int | None = None) -> tuple:
    """What the parser says of ``text`` when walked in windows of ``window`` characters (0: every
    token walked one by one); ``None``: the whole text in one call of the C decoder."""
    if window is None:
        run = lambda: strictjson._prune(strictjson._decoder(text).decode(text), WANTED)
    else:
        run = lambda: strictjson._Walk(text, strictjson._decoder(text), window).document(WANTED)
    try:
        return "ok", run()
    except json.JSONDecodeError as e:
        return "not json", e.pos
    except strictjson.Refused as e:
        return "refused", str(e)
    except RecursionError:
        return "too deep",


scalars = st.one_of(st.none(), st.booleans(), st.integers(-10 ** 30, 10 ** 30),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8),
                    st.sampled_from(["{", "]", '"', "\\", "\n"]))
documents = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5) |
                         st.dictionaries(st.sampled_from("abcdJL012") | st.text(max_size=3), inner, max_size=5),
                         max_leaves=40)


@settings(max_examples=300, deadline=None)
@given(document=documents, cut=st.integers(0, 10 ** 6), junk=st.sampled_from(list(',:[]{}" 1xN')),
       mutate=st.booleans())
def test_the_walk_and_the_c_decoder_agree_on_every_text(document, cut, junk, mutate):
    text = json.dumps(document)
    if mutate:
        at = cut % (len(text) + 1)
        text = text[:at] + junk + text[at + 1:]
    whole = verdict(text)
    for window in (0, 7, 64):
        walked = verdict(text, window)
        assert walked[0] == whole[0], (text, window)
        if whole[0] != "not json":
            assert walked == whole, (text, window)
    if not mutate:
        assert whole == ("ok", strictjson._prune(document, WANTED))


@pytest.mark.parametrize("window", [0, 64, None])
@pytest.mark.parametrize("text, reason", [
    ('{"a": NaN}', "NaN is not allowed"),
    ('{"a": [1, Infinity]}', "Infinity is not allowed"),
    ('{"a": -Infinity}', "-Infinity is not allowed"),
    ('{"a": 1, "a": 2}', "duplicate key 'a'"),
    ('{"J": {"x": [{"d": 1, "d": 1}]}}', "duplicate key 'd'"),
    ('{"a": ' + "9" * 5000 + "}", "a number of 5,000 characters"),
    ('{"a": [' + "1" * 101 + "]}", "a number of 101 characters"),
    ('{"a": 1e999}', "the number 1e999 is too large"),
    ('{"a": -2.5E+400}', "the number -2.5E+400 is too large"),
])
def test_refused_whichever_way_the_text_is_read(text, reason, window):
    found = verdict(text, window)
    assert found[0] == "refused" and reason in found[1]


def test_a_duplicate_key_is_found_across_the_runs_the_walk_reads():
    members = ", ".join(f'"k{i}": {i}' for i in range(500))
    text = '{"J": {' + members + ', "k3": 0}}'
    assert verdict(text, 64) == ("refused", "duplicate key 'k3' in an object")


def test_too_many_keys_open_at_once_is_refused_not_remembered(monkeypatch):
    monkeypatch.setattr(strictjson, "MAX_OPEN_KEYS", 100)
    text = "{" + ", ".join(f'"k{i}": {i}' for i in range(150)) + "}"
    assert verdict(text, 64) == ("refused", "more than 100 keys in open objects at once")


def test_nesting_deeper_than_the_walk_allows_is_too_deep():
    text = "[" * (strictjson.MAX_DEPTH + 1) + "]" * (strictjson.MAX_DEPTH + 1)
    assert verdict(text, 0) == ("too deep",)


@pytest.mark.parametrize("head", ["", '{"J": [' + '{"a": [1, 2]}, ' * 6000],
                         ids=["read at once", "walked: over a window"])
@pytest.mark.parametrize("tail, message", [('"open', "Unterminated string starting at"),
                                           ('"a\x01b"', "Invalid control character at")])
def test_a_parser_message_ending_in_at_says_at_once(head, tail, message):
    text = head + tail
    column = len(head) + 1 + (2 if "\x01" in tail else 0)
    with pytest.raises(Invalid) as e:
        parse(text.encode(), "RANK")
    assert str(e.value) == f"invalid JSON: {message} line 1 column {column}"


@pytest.mark.parametrize("field", ["Title", "StudioCode", "JobCategory"])
def test_a_lone_surrogate_in_a_stored_field_fails_validation_naming_it(field):
    details = {"ClientCode": "RANK", "JobCategory": "X", field: "a\udc80b"}
    data = json.dumps({"JobSpecification": {"JobDetails": details}}).encode()
    with pytest.raises(Invalid, match=rf"JobDetails\.{field} holds a lone UTF-16 surrogate \(\\udc80\)"):
        parse(data, "RANK")


def test_a_surrogate_pair_is_text_and_stays():
    data = b'{"JobSpecification": {"JobDetails": {"ClientCode": "RANK", "JobCategory": "X", "Title": "\\ud83d\\ude00"}}}'
    assert parse(data, "RANK").title == "\U0001f600"


@pytest.mark.parametrize("item", ['{"id": 12345, "tags": ["a", "b"], "v": {"x": [1, 2]}}', "[]", "0"])
def test_memory_stays_near_the_size_of_the_file(item):
    """A 24 MiB job of small values: json.loads grows a process by 4-25x its size; parse() by its
    text and one scan of it, about 2x (the high-water mark is read in a fresh process)."""
    script = textwrap.dedent(f"""
        import resource
        from pipeline.validation import parse
        data = b"".join([b'{{"JobSpecification": {{"JobDetails": {{"ClientCode": "RANK", "JobCategory": "X", "Items": [',
                         ({item!r} + ", ").encode() * (24 * 2 ** 20 // {len(item) + 2}), b'1]}}}}}}'])
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert parse(data, "RANK").client_code == "RANK"
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) * 1024 / len(data))
    """)
    grew = float(subprocess.run([sys.executable, "-c", script], check=True, capture_output=True,
                                text=True).stdout)
    assert grew < 2.5, f"parsing grew the process by {grew:.2f}x the file's size"


@pytest.mark.parametrize("window", [0, 7, 64, None])
def test_array_items_named_by_index_are_kept_and_the_others_are_not(window):
    text = json.dumps({"L": [{"x": 1}, 5, {"b": "kept", "y": [1, 2]}, "after the last named"],
                       "J": {"c": [[9], {"d": 1}]}})
    assert verdict(text, window) == ("ok", {"L": [{}, None, {"b": "kept"}], "J": {"c": [None, {}]}})
