"""gateway/errors.py: the error tree, its encoders, and the one table of statuses and
codes, which the docstring and docs/protocol.md must state as the classes do."""

from __future__ import annotations

import ast
import itertools
import json
import re
from pathlib import Path

import pytest

from gateway import errors
from gateway.errors import (
    GatewayError,
    Internal,
    NotFound,
    OverCapacity,
    Unauthorized,
    UpstreamError,
    UpstreamFailed,
    UpstreamRateLimited,
    from_event_data,
)
from gateway.responses import error_response

PROTOCOL = Path(__file__).parent.parent / "docs" / "protocol.md"


def all_classes() -> list[type[GatewayError]]:
    found: list[type[GatewayError]] = []
    todo = [GatewayError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


#: The errors raised (GatewayError and UpstreamError only group them).
RAISED = sorted(
    (cls for cls in all_classes() if cls not in (GatewayError, UpstreamError)),
    key=lambda cls: cls.__name__,
)


# --- the one table: the classes, as the docstring and the docs state them ----------------

#: A line of the docstring's tree: its branch, the class, and status, code, "yes".
TREE_LINE = re.compile(
    r"^[ │]*[├└]── (?P<name>\w+)(?:\s+(?P<status>\d{3})\s+(?P<code>\w+)(?P<yes>\s+yes)?)?"
)


def docstring_tree() -> dict[str, tuple[str, int | None, str | None, bool]]:
    """Each class in the errors.py docstring: its parent, status, code and retryable."""
    doc = errors.__doc__ or ""
    rows: dict[str, tuple[str, int | None, str | None, bool]] = {}
    stack = [(-1, "GatewayError")]  # (column of the name, name) of each open branch
    for line in doc.splitlines():
        match = TREE_LINE.match(line)
        if match is None:
            continue
        column = match.start("name")
        while stack[-1][0] >= column:
            stack.pop()
        status = match["status"]
        rows[match["name"]] = (
            stack[-1][1],
            None if status is None else int(status),
            match["code"],
            match["yes"] is not None,
        )
        stack.append((column, match["name"]))
    return rows


def markdown_table(text: str, heading: str) -> list[list[str]]:
    """The cells of the first table after `heading`, without its header rows."""
    lines = text[text.index(heading) :].splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith("|"))
    table = itertools.takewhile(lambda line: line.startswith("|"), lines[start:])
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in list(table)[2:]]


def test_the_docstring_tree_is_the_class_tree():
    tree = docstring_tree()
    assert set(tree) | {"GatewayError"} == {cls.__name__ for cls in all_classes()}
    for cls in all_classes():
        if cls is GatewayError:
            continue
        parent, status, code, retryable = tree[cls.__name__]
        assert parent == cls.__base__.__name__, cls
        if status is not None:  # UpstreamError's line explains instead
            assert (status, code, retryable) == (cls.status, cls.code, cls.retryable), cls


def test_the_protocol_tables_state_what_the_classes_do():
    text = PROTOCOL.read_text()
    by_code = {cls.code: cls for cls in RAISED}
    documented = set()
    for status, codes, _ in markdown_table(text, "## Errors before a stream"):
        for code in re.findall(r"`(\w+)`", codes):
            assert by_code[code].status == int(status), code
            documented.add(code)
    for code, retryable, _ in markdown_table(text, "## Error codes in streams"):
        code = code.strip("`")
        assert by_code[code].retryable == (retryable == "yes"), code
        documented.add(code)
    assert documented == set(by_code)


def test_the_tree_imports_no_library():
    """Translating the `openai` SDK's exceptions and answering HTTP are the
    boundaries' work (`upstream_errors`, `openai_errors`, `responses`)."""
    source = Path(errors.__file__).read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert imported == {"__future__", "json", "math", "typing"}


@pytest.mark.parametrize("cls", RAISED)
def test_defaults(cls):
    error = cls()
    assert error.message == cls.default_message
    assert error.message
    assert str(error) == error.message
    assert error.retry_after is None
    challenge = {"WWW-Authenticate": 'Bearer realm="sse-gateway"'}
    assert error.headers() == (challenge if cls is Unauthorized else {})


def test_codes_are_unique_but_for_the_groups():
    codes = [cls.code for cls in RAISED]
    assert len(codes) == len(set(codes))


def test_upstream_errors_are_never_4xx_except_429():
    for cls in all_classes():
        if issubclass(cls, UpstreamError):
            assert cls.status == 429 or cls.status >= 500, cls


# --- the encoders: event_data, body, headers (and the HTTP answer made of them) ----------


@pytest.mark.parametrize("cls", RAISED)
def test_event_data(cls):
    assert json.loads(cls("Something broke.").event_data()) == {
        "code": cls.code,
        "message": "Something broke.",
        "retryable": cls.retryable,
    }


@pytest.mark.parametrize("cls", RAISED)
def test_body_shape(cls):
    assert cls("Nope.").body() == {"error": {"code": cls.code, "message": "Nope."}}


def test_event_data_is_one_line_of_json():
    data = UpstreamFailed('line\nbreak\r"quoted" 🎉').event_data()
    assert "\n" not in data
    assert "\r" not in data
    assert json.loads(data)["message"] == 'line\nbreak\r"quoted" 🎉'


def test_retry_after_in_event_data_body_and_headers():
    error = UpstreamRateLimited("Slow down.", retry_after=3.0)
    assert json.loads(error.event_data()) == {
        "code": "upstream_rate_limited",
        "message": "Slow down.",
        "retryable": True,
        "retry_after": 3.0,
    }
    assert error.body() == {
        "error": {"code": "upstream_rate_limited", "message": "Slow down.", "retry_after": 3.0}
    }
    assert error.headers() == {"Retry-After": "3"}


@pytest.mark.parametrize(
    ("seconds", "header"),
    [(0.0, "1"), (0.2, "1"), (1.0, "1"), (1.2, "2"), (2.5, "3"), (7.0, "7")],
)
def test_retry_after_header_is_whole_seconds_rounded_up(seconds, header):
    # Never shorter than the real wait, or clients come back too early.
    assert OverCapacity(retry_after=seconds).headers() == {"Retry-After": header}


def test_retry_after_is_whole_seconds_everywhere():
    """A rate limit's remaining window (56.73 s) is 57 in the body and the event too."""
    error = OverCapacity(retry_after=56.73452874700001)
    assert error.body()["error"]["retry_after"] == 57
    assert json.loads(error.event_data())["retry_after"] == 57
    assert error.headers() == {"Retry-After": "57"}


def test_error_response():
    response = error_response(OverCapacity(retry_after=2))
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/json"
    assert response.headers["retry-after"] == "2"
    assert json.loads(response.body) == {
        "error": {
            "code": "over_capacity",
            "message": OverCapacity.default_message,
            "retry_after": 2,
        }
    }


def test_error_response_without_retry_after():
    response = error_response(NotFound())
    assert response.status_code == 404
    assert "retry-after" not in response.headers
    assert json.loads(response.body) == {"error": {"code": "not_found", "message": "Not found."}}


# --- from_event_data ----------------------------------------------------------


@pytest.mark.parametrize("cls", RAISED)
@pytest.mark.parametrize("retry_after", [None, 4.5])
def test_from_event_data_round_trips(cls, retry_after):
    original = cls("A message.", retry_after=retry_after)
    rebuilt = from_event_data(original.event_data())
    assert (rebuilt.status, rebuilt.code, rebuilt.retryable) == (
        cls.status,
        cls.code,
        cls.retryable,
    )
    assert rebuilt.message == "A message."
    assert rebuilt.retry_seconds == original.retry_seconds
    assert rebuilt.event_data() == original.event_data()
    assert rebuilt.body() == original.body()
    assert rebuilt.headers() == original.headers()


@pytest.mark.parametrize("cls", [cls for cls in RAISED if cls not in (Internal, UpstreamFailed)])
def test_from_event_data_rebuilds_the_class(cls):
    # Internal and UpstreamFailed share their code with GatewayError and UpstreamError.
    assert type(from_event_data(cls().event_data())) is cls


def test_from_event_data_unknown_code_is_internal():
    rebuilt = from_event_data('{"code": "no_such_code", "message": "?", "retryable": true}')
    assert (rebuilt.status, rebuilt.code, rebuilt.retryable) == (500, "internal", False)
    assert rebuilt.message == "?"


def test_module_exports_every_class():
    for cls in all_classes():
        assert cls.__name__ in errors.__all__
