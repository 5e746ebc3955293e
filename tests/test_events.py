"""SSE framing and Last-Event-ID parsing (gateway/events.py), checked with independent parsers.

Every frame is parsed back with two SSE implementations that are not ours:
httpx-sse's decoder (fed line by line, lines split on CR, LF and CRLF as the
WHATWG spec says) and the `openai` SDK's incremental byte decoder.
"""

from __future__ import annotations

import json
import random
import re

import pytest
from httpx_sse._decoders import SSEDecoder as HttpxSSEDecoder
from httpx_sse._decoders import SSELineDecoder
from openai._streaming import SSEDecoder as OpenAISSEDecoder

from gateway.events import HEARTBEAT, frame, parse_last_event_id, retry


def parse_httpx_sse(raw: bytes) -> list[tuple[str, str, str, int | None]]:
    """(event, data, id, retry) of every dispatched event, by httpx-sse, line by line."""
    lines = SSELineDecoder()
    decoder = HttpxSSEDecoder()
    events = []
    for line in [*lines.decode(raw.decode("utf-8")), *lines.flush()]:
        event = decoder.decode(line)
        if event is not None:
            events.append((event.event, event.data, event.id, event.retry))
    return events


def parse_openai(raw: bytes, *, bytewise: bool = False) -> list[tuple[str, str, str, int | None]]:
    """The same, by the openai SDK's decoder; `bytewise` feeds one byte at a time."""
    chunks = [raw[i : i + 1] for i in range(len(raw))] if bytewise else [raw]
    return [
        (event.event or "message", event.data, event.id or "", event.retry)
        for event in OpenAISSEDecoder().iter_bytes(iter(chunks))
    ]


def parse_both(raw: bytes) -> list[tuple[str, str, str, int | None]]:
    """Parse with both decoders (and the SDK's byte by byte); they must agree."""
    first = parse_httpx_sse(raw)
    assert parse_openai(raw) == first
    assert parse_openai(raw, bytewise=True) == first
    return first


# --- frame -----------------------------------------------------------------


def test_frame_exact_bytes_with_id():
    assert frame("token", '{"text": "hi"}', id=7) == (
        b'id: 7\nevent: token\ndata: {"text": "hi"}\n\n'
    )


def test_frame_without_id_has_no_id_line():
    raw = frame("done", "{}")
    assert raw == b"event: done\ndata: {}\n\n"
    assert parse_both(raw) == [("done", "{}", "", None)]


def test_frame_id_zero_is_written():
    assert frame("token", "x", id=0) == b"id: 0\nevent: token\ndata: x\n\n"
    assert parse_both(frame("token", "x", id=0)) == [("token", "x", "0", None)]


def test_frame_parses_back_to_event_data_and_id():
    assert parse_both(frame("token", '{"text": "a"}', id=1)) == [
        ("token", '{"text": "a"}', "1", None)
    ]


def test_whatwg_multiline_data_example():
    # The spec's stock-ticker example: three data lines dispatch "YHOO\n+2\n10".
    raw = frame("message", "YHOO\n+2\n10")
    assert raw == b"event: message\ndata: YHOO\ndata: +2\ndata: 10\n\n"
    assert parse_both(raw) == [("message", "YHOO\n+2\n10", "", None)]


@pytest.mark.parametrize(
    ("data", "expected_lines"),
    [
        ("a\nb", [b"data: a", b"data: b"]),
        ("a\r\nb", [b"data: a", b"data: b"]),
        ("a\rb", [b"data: a", b"data: b"]),
        ("a\r\n\r\nb", [b"data: a", b"data: ", b"data: b"]),
        ("a\n\rb", [b"data: a", b"data: ", b"data: b"]),
        ("\na", [b"data: ", b"data: a"]),
        ("a\n", [b"data: a", b"data: "]),
        ("", [b"data: "]),
    ],
)
def test_line_breaks_inside_data_become_data_lines(data, expected_lines):
    raw = frame("e", data)
    assert raw == b"\n".join([b"event: e", *expected_lines]) + b"\n\n"
    # CR, LF and CRLF are all line breaks to an SSE parser: each comes back as LF.
    assert parse_both(raw) == [("e", re.sub(r"\r\n|\r", "\n", data), "", None)]


@pytest.mark.parametrize(
    "data",
    [
        "\r",
        "\r\r\n\n",
        "x\r\n",
        "data: injected\n\nevent: evil\nid: 99\n\n",
        "line\r\nid: 5\r\n\r\nevent: done",
        ": not a comment\n:also not",
        "retry: 1\n",
    ],
)
def test_output_uses_only_lf_and_cannot_be_injected(data):
    raw = frame("token", data, id=3)
    assert b"\r" not in raw
    # One event, with our event name and id, whatever the data holds.
    assert parse_both(raw) == [("token", re.sub(r"\r\n|\r", "\n", data), "3", None)]


@pytest.mark.parametrize(
    "data",
    [
        " leading space",
        "  two leading spaces",
        "trailing space ",
        "colon: inside: data",
        "data:",
        "emoji 🎉 and 日本語 and é",
        "\x00nul",
        "tab\tseparated",
        '"quotes" and \\backslashes\\',
    ],
)
def test_data_without_line_breaks_round_trips_exactly(data):
    raw = frame("token", data, id=12)
    assert raw == f"id: 12\nevent: token\ndata: {data}\n\n".encode()
    assert parse_both(raw) == [("token", data, "12", None)]


def test_json_payloads_of_nasty_text_round_trip_exactly():
    texts = [
        "line one\nline two\r\nthree\rfour",
        "data: fake\n\nevent: done\nid: 999\n\n",
        '{"text": "nested"}',
        "🎉 naïve café \u2028 \u2029 \x85 end",
        "\n\n\n",
        "",
    ]
    raw = b"".join(frame("token", json.dumps({"text": t}), id=i) for i, t in enumerate(texts, 1))
    events = parse_both(raw)
    assert [(e[0], e[2]) for e in events] == [("token", str(i)) for i in range(1, len(texts) + 1)]
    assert [json.loads(e[1])["text"] for e in events] == texts


def test_json_payload_with_non_ascii_output_round_trips():
    # json.dumps(ensure_ascii=False) keeps U+2028/U+2029/U+0085 raw; SSE must not split on them.
    text = "a\u2028b\u2029c\x85d\x0be\x0cf 🎉"
    data = json.dumps({"text": text}, ensure_ascii=False)
    (event,) = parse_both(frame("token", data, id=1))
    assert json.loads(event[1]) == {"text": text}


def test_random_data_round_trips_with_line_breaks_normalised():
    rng = random.Random(20240601)
    alphabet = ["a", "b", " ", ":", "\n", "\r", "\r\n", "é", "🎉", "data", "id", "event", "\t"]
    raw = b""
    expected = []
    for index in range(1, 301):
        data = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 20)))
        raw += frame("token", data, id=index)
        expected.append(("token", re.sub(r"\r\n|\r", "\n", data), str(index), None))
    assert b"\r" not in raw
    assert parse_both(raw) == expected


@pytest.mark.parametrize("event", ["a\nb", "a\rb", "a\r\nb", "token\n", "\rtoken"])
def test_event_name_with_line_break_is_refused(event):
    with pytest.raises(ValueError):
        frame(event, "data")


def test_frames_concatenate_into_a_stream():
    raw = retry(2000) + frame("token", "a", id=1) + HEARTBEAT + frame("done", "{}", id=2)
    assert whatwg_parse(raw) == ([("token", "a", "1"), ("done", "{}", "2")], 2000)
    # httpx-sse and the SDK also report data-less blocks (the retry block, and
    # the heartbeat once an id was seen); WHATWG dispatches no event for them.
    with_data = [e for e in parse_both(raw) if e[1]]
    assert with_data == [("token", "a", "1", None), ("done", "{}", "2", None)]


# --- comment and heartbeat -------------------------------------------------


def test_heartbeat_is_a_ping_comment_line():
    assert HEARTBEAT == b": ping\n"


def test_heartbeats_dispatch_nothing_in_any_parser():
    # No blank line after the comment: httpx-sse and the SDK turn a blank line
    # after a comment into an empty event once an id was seen (WHATWG does not).
    stream = HEARTBEAT + frame("token", "x", id=1) + HEARTBEAT + HEARTBEAT
    stream += frame("token", "y", id=2) + HEARTBEAT
    assert parse_both(stream) == [("token", "x", "1", None), ("token", "y", "2", None)]
    assert whatwg_parse(stream) == ([("token", "x", "1"), ("token", "y", "2")], None)
    assert b"\r" not in stream


def test_whatwg_comment_example_is_ignored():
    # From the spec: a stream starting with ": test stream" dispatches only its events.
    stream = b": test stream\n\n" + frame("message", "first event", id=1)
    assert parse_both(stream) == [("message", "first event", "1", None)]


# --- retry -----------------------------------------------------------------


@pytest.mark.parametrize("ms", [0, 1, 2000, 60_000])
def test_retry_field(ms):
    raw = retry(ms)
    assert raw == f"retry: {ms}\n\n".encode()
    assert parse_both(raw) == [("message", "", "", ms)]
    assert whatwg_parse(raw) == ([], ms)


def test_retry_before_an_event_dispatches_only_that_event_per_whatwg():
    # A WHATWG parser dispatches nothing for a block without data; the
    # reconnection time is still applied. Checked with a minimal spec parser.
    raw = retry(1500) + frame("token", "t", id=1)
    dispatched, reconnection = whatwg_parse(raw)
    assert dispatched == [("token", "t", "1")]
    assert reconnection == 1500


def whatwg_parse(raw: bytes) -> tuple[list[tuple[str, str, str]], int | None]:
    """A direct transcription of the WHATWG event-stream interpretation algorithm."""
    text = raw.decode("utf-8")
    lines = re.split(r"\r\n|\r|\n", text)
    lines.pop()  # the text after the final line break is an unterminated line
    events: list[tuple[str, str, str]] = []
    data, event_type, last_id, reconnection = "", "", "", None
    for line in lines:
        if line == "":
            if data == "":
                event_type = ""
                continue
            data = data.removesuffix("\n")
            events.append((event_type or "message", data, last_id))
            data, event_type = "", ""
            continue
        if line.startswith(":"):
            continue
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            event_type = value
        elif name == "data":
            data += value + "\n"
        elif name == "id" and "\x00" not in value:
            last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            reconnection = int(value)
    return events, reconnection


def test_whatwg_reference_parser_agrees_on_nasty_data():
    data = "x\r\ny\rz\n\n: c\nid: 9"
    raw = HEARTBEAT + frame("token", data, id=4) + HEARTBEAT
    assert whatwg_parse(raw) == ([("token", "x\ny\nz\n\n: c\nid: 9", "4")], None)


# --- parse_last_event_id ---------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", 1), ("0", 0), ("42", 42), ("123456789012", 123456789012)],
)
def test_valid_last_event_id(value, expected):
    assert parse_last_event_id(value) == expected


@pytest.mark.parametrize("value", [None, ""])
def test_absent_last_event_id_is_none(value):
    assert parse_last_event_id(value) is None


@pytest.mark.parametrize(
    "value",
    [
        "abc",
        "1a",
        "a1",
        "-1",
        "+1",
        "1.0",
        "1e3",
        "0x10",
        " 1",
        "1 ",
        " ",
        "1" * 100,
        "9" * 40,
        "1\r",
        "1\n",
        "\r\n",
        "1\x00",
        "\x00",
        "1\r\nevent: done",
        "١٢",  # Arabic-Indic digits: str.isdigit() is true for them
        "\uff11\uff12",  # fullwidth digits
        "²",  # superscript two: isdigit() is true
        "٣",
    ],
)
def test_malformed_last_event_id_raises(value):
    with pytest.raises(ValueError):
        parse_last_event_id(value)
