"""`StreamTokens`: stream ids that only their creator can use, and events tokens that
open one stream until they expire."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from gateway.tokens import StreamTokens

NOW = 1_000_000_000.0  # in 2001


@pytest.fixture
def tokens() -> StreamTokens:
    return StreamTokens(b"k" * 32, ttl=60)


def test_a_stream_id_is_url_safe_random_and_bound_to_its_creator(tokens: StreamTokens) -> None:
    first, second = tokens.new_stream_id("alice"), tokens.new_stream_id("alice")
    assert first != second
    assert re.fullmatch(r"[A-Za-z0-9_-]{48}", first)
    assert tokens.owns(first, "alice")
    assert not tokens.owns(first, "bob")


def test_a_stream_id_from_another_key_or_altered_is_not_owned(tokens: StreamTokens) -> None:
    stream_id = tokens.new_stream_id("alice")
    assert not StreamTokens(b"other", ttl=60).owns(stream_id, "alice")
    altered = ("A" if stream_id[0] != "A" else "B") + stream_id[1:]
    assert not tokens.owns(altered, "alice")
    assert not tokens.owns(stream_id[:-1], "alice")
    assert not tokens.owns("", "alice")


def test_owners_are_compared_exactly_even_with_odd_text(tokens: StreamTokens) -> None:
    owner = "key:\udcff\0 é"  # a lone surrogate and a NUL cannot break the tag
    stream_id = tokens.new_stream_id(owner)
    assert tokens.owns(stream_id, owner)
    assert not tokens.owns(stream_id, "key:")


def test_an_events_token_opens_its_stream_until_it_expires(tokens: StreamTokens) -> None:
    token = tokens.issue("stream-a", now=NOW)
    assert token.startswith(f"{int(NOW + 60)}.")
    assert tokens.valid("stream-a", token, now=NOW)
    assert tokens.valid("stream-a", token, now=NOW + 59)
    assert not tokens.valid("stream-a", token, now=NOW + 60)
    assert not tokens.valid("stream-b", token, now=NOW)


@pytest.mark.parametrize(
    "forge",
    [
        lambda token: "9" * 12 + "." + token.partition(".")[2],  # a later expiry, same tag
        lambda token: token.partition(".")[0] + ".",
        lambda token: token + "x",
        lambda token: "",
        lambda token: ".",
        lambda token: "١٢٣." + token.partition(".")[2],  # digits, but not ASCII ones
        lambda token: "1" * 13 + "." + token.partition(".")[2],
    ],
)
def test_a_forged_or_malformed_token_is_refused(
    tokens: StreamTokens, forge: Callable[[str], str]
) -> None:
    token = tokens.issue("stream-a", now=NOW)
    assert not tokens.valid("stream-a", forge(token), now=NOW)


def test_without_now_the_clock_is_used(tokens: StreamTokens) -> None:
    assert tokens.valid("stream-a", tokens.issue("stream-a"))
    assert not tokens.valid("stream-a", tokens.issue("stream-a", now=NOW))
