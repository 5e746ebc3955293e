"""`/metrics`: exact counts after known streams, its own port, the dashboard (several
workers: test_metrics_multiprocess.py)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import httpx

from tests.helpers import (
    TIMEOUT,
    create,
    free_port,
    labelled,
    marker,
    scrape,
    value,
    wait_until,
)

REPO = Path(__file__).resolve().parent.parent

NAMES = """gateway_streams_started_total gateway_streams_finished_total gateway_active_streams
gateway_active_subscribers gateway_time_to_first_token_seconds
gateway_upstream_time_to_first_token_seconds gateway_inter_token_latency_seconds
gateway_tokens_total gateway_sent_bytes_total gateway_upstream_requests_total
gateway_upstream_retries_total gateway_upstream_request_duration_seconds
gateway_http_requests_total gateway_redis_errors_total""".split()


def read(client: httpx.Client, events_url: str) -> tuple[int, list[tuple[str, str]]]:
    """The raw body size and the (event, data) pairs of one whole SSE response."""
    with client.stream("GET", events_url) as response:
        assert response.status_code == 200
        body = response.read()
    events = []
    for block in body.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            events.append((fields["event"], fields["data"]))
    return len(body), events


def tokens_and_end(events: list[tuple[str, str]]) -> tuple[int, str]:
    count = sum(1 for event, _ in events if event == "token")
    event, data = events[-1]
    return count, "done" if event == "done" else json.loads(data)["code"]


def test_known_streams_give_exact_counts(gateway, simulator):
    server = gateway(
        upstream={"retries": 0, "timeouts": {"idle": 0.5}},
        streams={"disconnect_grace": 0.3},
    )
    url = server.url
    expected_outcomes: Counter[str] = Counter()
    expected_upstream: Counter[tuple[str, str]] = Counter()
    token_counts: list[int] = []
    events_requests = 0

    with httpx.Client(timeout=TIMEOUT) as client:
        cases = [
            ("[[sim tokens=5]]", "done", "200"),
            ("[[sim tokens=7]]", "done", "200"),
            ("[[sim tokens=5 fault=drop after=2]]", "upstream_error", "200"),
            ("[[sim tokens=5 fault=malformed after=1]]", "upstream_error", "200"),
            ("[[sim tokens=3 fault=no_finish]]", "upstream_incomplete", "200"),
            ("[[sim tokens=3 fault=eof after=2]]", "upstream_incomplete", "200"),
            ("[[sim tokens=5 fault=stall after=1]]", "upstream_timeout", "200"),
            ("[[sim status=401]]", "upstream_auth", "401"),
            ("[[sim status=400]]", "upstream_bad_request", "400"),
            ("[[sim status=429]]", "upstream_rate_limited", "429"),
            ("[[sim status=500]]", "upstream_error", "500"),
        ]
        for directive, outcome, status in cases:
            _, events = read(client, create(client, url, f"{marker()} {directive}"))
            events_requests += 1
            count, end = tokens_and_end(events)
            assert end == outcome, directive
            token_counts.append(count)
            expected_outcomes[outcome] += 1
            expected_upstream[(status, outcome)] += 1
        assert token_counts[:4] == [5, 7, 2, 1]

        # Cancelled by DELETE while a reader follows the stream.
        events_url = create(client, url, f"{marker()} [[sim tokens=200 delay_ms=20]]")
        events: list[tuple[str, str]] = []
        with client.stream("GET", events_url) as response:
            event = None
            for line in response.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event:
                    if event == "token" and not events:
                        assert client.delete(events_url.removesuffix("/events")).status_code == 204
                    events.append((event, line[6:]))
        events_requests += 1
        count, end = tokens_and_end(events)
        assert end == "cancelled" and 1 <= count < 200
        token_counts.append(count)
        expected_outcomes["cancelled"] += 1
        expected_upstream[("200", "cancelled")] += 1

        # A reader that leaves: after the grace the generation stops (client_gone).
        events_url = create(client, url, f"{marker()} [[sim tokens=200 delay_ms=20]]")
        with client.stream("GET", events_url) as response:
            for line in response.iter_lines():
                if line.startswith("event: token"):
                    break
        events_requests += 1
        wait_until(lambda: server.state.generations.active == 0)
        _, events = read(client, events_url)  # the replay: what it generated, and how it ended
        events_requests += 1
        count, end = tokens_and_end(events)
        assert end == "cancelled"  # what clients see is unchanged
        assert 1 <= count < 200
        token_counts.append(count)
        expected_outcomes["client_gone"] += 1
        expected_upstream[("200", "cancelled")] += 1

        assert client.get(f"{url}/no/such/page").status_code == 404
        wait_until(lambda: value(scrape(client, url), "gateway_active_subscribers") == 0)
        samples = scrape(client, url)

    streams = len(token_counts)
    with_tokens = sum(1 for count in token_counts if count)
    assert value(samples, "gateway_streams_started_total") == streams == 13
    finished = labelled(samples, "gateway_streams_finished_total")
    assert finished == {(("outcome", k),): v for k, v in expected_outcomes.items()}
    assert value(samples, "gateway_active_streams") == 0
    assert value(samples, "gateway_active_subscribers") == 0
    assert value(samples, "gateway_tokens_total") == sum(token_counts)
    assert value(samples, "gateway_time_to_first_token_seconds_count") == with_tokens
    assert value(samples, "gateway_inter_token_latency_seconds_count") == (
        sum(token_counts) - with_tokens
    )
    assert value(samples, "gateway_upstream_time_to_first_token_seconds_count") == with_tokens
    upstream = labelled(samples, "gateway_upstream_requests_total")
    assert upstream == {
        (("code", code), ("status", status)): n for (status, code), n in expected_upstream.items()
    }
    assert value(samples, "gateway_upstream_request_duration_seconds_count") == streams
    assert value(samples, "gateway_upstream_retries_total") == 0
    http = labelled(samples, "gateway_http_requests_total")
    scrapes = http.pop((("method", "GET"), ("route", "/metrics"), ("status", "200")))
    assert scrapes >= 1  # the waits before the last scrape
    route = "/v1/streams/{stream_id}"
    assert http == {
        (("method", "POST"), ("route", "/v1/streams"), ("status", "201")): streams,
        (("method", "GET"), ("route", f"{route}/events"), ("status", "200")): events_requests,
        (("method", "DELETE"), ("route", route), ("status", "204")): 1,
        (("method", "GET"), ("route", "unmatched"), ("status", "404")): 1,
    }
    # Histogram buckets suit LLMs: 10 ms to 60 s.
    buckets = {
        labels[0][1]
        for (name, labels) in samples
        if name == "gateway_time_to_first_token_seconds_bucket"
    }
    assert {"0.01", "60.0", "+Inf"} <= buckets


def test_labels_are_bounded(gateway, client):
    url = gateway().url
    events_url = create(client, url, f"{marker()} [[sim tokens=2]]")
    read(client, events_url)
    stream_id = events_url.split("/")[-2]
    client.request("PROPFIND", f"{url}/v1/streams")
    text = client.get(f"{url}/metrics").text
    assert stream_id not in text
    assert "PROPFIND" not in text
    assert 'method="OTHER"' in text


def test_sent_bytes_are_the_bytes_clients_received(gateway, client):
    url = gateway().url
    received = 0
    for tokens in (3, 9):
        size, _ = read(client, create(client, url, f"{marker()} [[sim tokens={tokens}]]"))
        received += size
    response = client.post(f"{url}/api/stream", json={"message": f"{marker()} [[sim tokens=4]]"})
    received += len(response.content)
    assert value(scrape(client, url), "gateway_sent_bytes_total") == received


def test_retries_are_counted(gateway, client):
    url = gateway(upstream={"retries": 2}).url
    key = marker()
    read(
        client, create(client, url, f"{key} [[sim status=429 retry_after=0.05 times=1 key={key}]]")
    )
    samples = scrape(client, url)
    assert value(samples, "gateway_upstream_retries_total") == 1
    assert labelled(samples, "gateway_upstream_requests_total") == {
        (("code", "upstream_rate_limited"), ("status", "429")): 1,
        (("code", "done"), ("status", "200")): 1,
    }
    assert value(samples, "gateway_streams_finished_total", outcome="done") == 1


def test_metrics_on_a_separate_port(gateway, client):
    port = free_port()
    url = gateway(metrics={"port": port}).url
    assert client.get(f"{url}/metrics").status_code == 404
    read(client, create(client, url, f"{marker()} [[sim tokens=2]]"))
    samples = scrape(client, f"http://127.0.0.1:{port}")
    assert value(samples, "gateway_streams_finished_total", outcome="done") == 1


def test_metrics_can_be_turned_off(gateway, client):
    url = gateway(metrics={"enabled": False}).url
    assert client.get(f"{url}/metrics").status_code == 404


def exposed(client: httpx.Client, url: str) -> set[str]:
    """Every series name `/metrics` declares, even before a labelled child exists."""
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", client.get(f"{url}/metrics").text, re.M):
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    return names


def test_every_metric_of_the_issue_is_exposed(url, client):
    assert set(NAMES) <= exposed(client, url)


def test_every_exposed_metric_is_documented(url, client):
    declared = re.findall(r"^# TYPE (gateway_\S+) ", client.get(f"{url}/metrics").text, re.M)
    documented = (Path(__file__).parent.parent / "docs" / "observability.md").read_text()
    assert declared
    missing = [name for name in declared if f"`{name}`" not in documented]
    assert [name for name in missing if not name.endswith("_created")] == []  # client's own


def test_dashboard_queries_only_metrics_that_exist(url, client):
    dashboard = json.loads((REPO / "deploy" / "grafana-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(exprs) >= 6
    names = exposed(client, url)
    used = set()
    for expr in exprs:
        used |= {word for word in _identifiers(expr) if word.startswith("gateway_")}
    assert used, exprs
    assert used <= names, used - names
    # What the issue asks the dashboard to show.
    joined = "\n".join(exprs)
    for needed in (
        "gateway_time_to_first_token_seconds_bucket",
        "gateway_inter_token_latency_seconds_bucket",
        "gateway_tokens_total",
        "gateway_active_streams",
        "gateway_streams_finished_total",
        "gateway_upstream_requests_total",
    ):
        assert needed in joined, needed
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, " in joined


def _identifiers(expr: str) -> set[str]:
    return set(re.findall(r"[a-zA-Z_][a-zA-Z0-9_]*", expr))
