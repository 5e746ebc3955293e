"""The SSE decoder (gateway/decoder.py) on the WHATWG spec's examples, fed whole,
split in two at every byte position, and one byte at a time."""

from __future__ import annotations

import pytest

from gateway.decoder import Event, SSEDecoder


def decode(*chunks: bytes) -> list[Event]:
    decoder = SSEDecoder()
    return [event for chunk in chunks for event in decoder.feed(chunk)]


def every_split(raw: bytes) -> list[list[bytes]]:
    """`raw` whole, cut in two at every position, and byte by byte."""
    splits = [[raw[:cut], raw[cut:]] for cut in range(len(raw) + 1)]
    return [[raw], *splits, [raw[i : i + 1] for i in range(len(raw))]]


# The examples of https://html.spec.whatwg.org/multipage/server-sent-events.html
# ("9.2.6 Interpreting an event stream" and "9.2.4 Processing model"), with what they fire.
SPEC_EXAMPLES = [
    (
        b"data: This is the first message.\n\n"
        b"data: This is the second message, it\n"
        b"data: has two lines.\n\n"
        b"data: This is the third message.\n\n",
        [
            Event("message", "This is the first message."),
            Event("message", "This is the second message, it\nhas two lines."),
            Event("message", "This is the third message."),
        ],
    ),
    (
        b"event: add\ndata: 73857293\n\nevent: remove\ndata: 2153\n\nevent: add\ndata: 113411\n\n",
        [Event("add", "73857293"), Event("remove", "2153"), Event("add", "113411")],
    ),
    (b"data: YHOO\ndata: +2\ndata: 10\n\n", [Event("message", "YHOO\n+2\n10")]),
    (
        b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\n"
        b"data:  third event\n\n",
        [
            Event("message", "first event", "1"),
            Event("message", "second event", ""),
            Event("message", " third event", ""),
        ],
    ),
    (
        b"data\n\ndata\ndata\n\ndata:\n\n",
        [Event("message", ""), Event("message", "\n"), Event("message", "")],
    ),
    (b"data:test\n\ndata: test\n\n", [Event("message", "test"), Event("message", "test")]),
]


@pytest.mark.parametrize("newline", [b"\n", b"\r", b"\r\n"], ids=["lf", "cr", "crlf"])
@pytest.mark.parametrize(("raw", "expected"), SPEC_EXAMPLES)
def test_spec_examples_at_every_split(raw: bytes, expected: list[Event], newline: bytes) -> None:
    raw = raw.replace(b"\n", newline)
    for chunks in every_split(raw):
        assert decode(*chunks) == expected, chunks


def test_the_last_block_needs_its_blank_line() -> None:
    assert decode(b"data: first\n\ndata: second\n") == [Event("message", "first")]
    assert decode(b"data: first\n\ndata: second") == [Event("message", "first")]


def test_an_event_comes_out_when_its_blank_line_arrives() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"retry: 2000\n\nid: 1\nevent: tok") == []
    assert decoder.feed(b'en\ndata: {"text": "a"}\n') == []
    assert decoder.feed(b"\n") == [Event("token", '{"text": "a"}', "1")]


def test_a_cr_ending_a_chunk_dispatches_at_once_and_its_lf_is_not_a_second_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r\n\r") == [Event("message", "a")]
    assert decoder.feed(b"\ndata: b\r\n") == []  # the LF completed the CRLF: no blank line
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\r\n") == [Event("message", "b")]


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\u0085", "\x0b", "\x0c", "\x1c"])
def test_only_cr_and_lf_end_lines(char: str) -> None:
    """Characters `str.splitlines()` splits on are data like any other."""
    raw = f'data: {{"content": "a{char}b"}}\n\n'.encode()
    for chunks in every_split(raw):
        assert decode(*chunks) == [Event("message", f'{{"content": "a{char}b"}}')]


def test_multibyte_characters_split_between_chunks_are_whole() -> None:
    text = "é中😀\u2028"
    raw = f"data: {text}\n\n".encode()
    for chunks in every_split(raw):
        assert decode(*chunks) == [Event("message", text)]


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    assert decode(b"data: a\xffb\xed\xa0\x80\n\n") == [
        Event("message", "a\ufffdb\ufffd\ufffd\ufffd")
    ]


def test_a_bom_is_dropped_only_at_the_start() -> None:
    for chunks in every_split(b"\xef\xbb\xbfdata: a\n\n\xef\xbb\xbfdata: b\n\ndata: c\n\n"):
        assert decode(*chunks) == [Event("message", "a"), Event("message", "c")]


def test_ids_carry_over_and_ids_with_nul_are_ignored() -> None:
    events = decode(b"id: 7\n\nevent: done\n\ndata: x\n\nid: bad\0\ndata: y\n\n")
    assert events == [Event("message", "x", "7"), Event("message", "y", "7")]


def test_retry_is_kept_only_when_all_digits() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"retry: 1500\n\nretry: 1e3\n\nretry: -1\n\n")
    assert decoder.retry == 1500


def test_field_without_colon_and_unknown_fields() -> None:
    assert decode(b"foo: bar\nevent\ndata\n\n") == [Event("message", "")]
