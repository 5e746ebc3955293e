"""Authentication against a real gateway: API keys, JWTs, stream tokens, ownership, CORS.

Every refused request must leave the upstream untouched: each test puts a
unique marker in its prompt and checks that the simulator never saw it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import logging
import os
import time
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway import ConfigError, load_settings, logs
from gateway.auth import hash_key, startup_warnings
from gateway.cli import main
from tests.helpers import marker, read_events, root_handler, test_settings, text_of, wait_until

ALICE, BOB = "alice-key-0f3b9c2e", "bob-key-77d1a04e"
API_KEYS = {"auth": {"mode": "api_key", "api_keys": [hash_key(ALICE), hash_key(BOB)]}}
JWT_SECRET = "jwt-secret-for-tests-" + "5d2c8e0a1b" * 5  # HS512 wants 64 bytes
ISSUER, AUDIENCE = "https://issuer.test", "sse-gateway"
UNAUTHORIZED = {"error": {"code": "unauthorized", "message": "Authentication required."}}
INVALID = {"error": {"code": "unauthorized", "message": "Invalid credentials."}}
FORBIDDEN = {"error": {"code": "forbidden", "message": "That stream belongs to another caller."}}
CHALLENGE = 'Bearer realm="sse-gateway"'
INVALID_CHALLENGE = 'Bearer realm="sse-gateway", error="invalid_token"'


#: Stream ownership and events-URL tokens go through the store: check both.


def body(word: str, directives: str = "") -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": f"{word} {directives}"}]}


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


def assert_refused(response: httpx.Response, status: int, expected: dict[str, Any]) -> None:
    assert response.status_code == status, response.text
    assert response.json() == expected
    if status == 401:
        challenge = CHALLENGE if expected == UNAUTHORIZED else INVALID_CHALLENGE
        assert response.headers["www-authenticate"] == challenge


# --- API keys ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/streams", "/api/stream"])
@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, UNAUTHORIZED),
        (bearer("wrong-key"), INVALID),
        ({"X-Auth": "wrong-key"}, INVALID),
        ({"Authorization": f"Basic {ALICE}"}, INVALID),
        ({"Authorization": "Bearer"}, INVALID),
        (bearer(hash_key(ALICE)), INVALID),  # the stored digest is not a key
    ],
    ids=["missing", "wrong-bearer", "wrong-x-auth", "basic", "empty", "digest"],
)
def test_bad_credentials_are_refused_before_the_upstream(
    client, gateway, simulator, path, headers, expected
):
    url = gateway(**API_KEYS).url
    word = marker()
    payload = body(word) if path == "/v1/streams" else {"message": word}
    response = client.post(f"{url}{path}", json=payload, headers=headers)
    assert_refused(response, 401, expected)
    assert simulator.sim.find(word) == []


@pytest.mark.parametrize("header", ["Authorization", "X-Auth"])
def test_a_valid_key_streams_and_the_events_url_carries_a_token(client, gateway, header):
    server = gateway(**API_KEYS)
    credential = f"Bearer {ALICE}" if header == "Authorization" else ALICE
    response = client.post(
        f"{server.url}/v1/streams", json=body(marker(), "[[sim tokens=3]]"),
        headers={header: credential},
    )  # fmt: skip
    assert response.status_code == 201, response.text
    stream_id, events_url = response.json()["id"], response.json()["events_url"]
    assert len(stream_id) == 48
    assert events_url.startswith(f"/v1/streams/{stream_id}/events?token=")
    assert ALICE not in events_url and hash_key(ALICE) not in events_url
    assert response.headers["location"] == f"/v1/streams/{stream_id}/events"
    events = read_events(client, f"{server.url}{events_url}")  # no headers: EventSource
    assert [e.event for e in events] == ["token"] * 3 + ["done"]


def test_api_stream_with_a_key(client, gateway):
    url = gateway(**API_KEYS).url
    response = client.post(
        f"{url}/api/stream", json={"message": "[[sim echo=1]]hi there"}, headers={"X-Auth": BOB}
    )
    assert response.status_code == 200
    assert response.text == "hi there"


def test_auth_off_keeps_plain_events_urls(client, url):
    response = client.post(f"{url}/v1/streams", json=body(marker()))
    assert response.status_code == 201
    assert response.json()["events_url"] == f"/v1/streams/{response.json()['id']}/events"


# --- streams belong to their creator -----------------------------------------------------


def created(client: httpx.Client, url: str, key: str, directives: str = "[[sim tokens=4]]"):
    response = client.post(
        f"{url}/v1/streams", json=body(marker(), directives), headers=bearer(key)
    )
    assert response.status_code == 201, response.text
    return response.json()["id"], f"{url}{response.json()['events_url']}"


def test_another_callers_stream_cannot_be_read_or_cancelled(client, gateway):
    url = gateway(**API_KEYS).url
    stream_id, events_url = created(client, url, ALICE, "[[sim tokens=4 delay_ms=50]]")
    plain = f"{url}/v1/streams/{stream_id}/events"
    assert_refused(client.get(plain, headers=bearer(BOB)), 403, FORBIDDEN)
    assert_refused(
        client.delete(f"{url}/v1/streams/{stream_id}", headers=bearer(BOB)), 403, FORBIDDEN
    )
    assert_refused(client.get(plain), 401, UNAUTHORIZED)
    assert_refused(client.delete(f"{url}/v1/streams/{stream_id}"), 401, UNAUTHORIZED)
    # Bob's attempts changed nothing; Alice reads it with her key or with the token.
    events = read_events(client, plain, headers=bearer(ALICE))
    assert [e.event for e in events] == ["token"] * 4 + ["done"]
    assert text_of(read_events(client, events_url)) == text_of(events)
    assert client.delete(f"{url}/v1/streams/{stream_id}", headers=bearer(ALICE)).status_code == 204


def test_a_made_up_stream_id_is_forbidden_not_looked_up(client, gateway):
    url = gateway(**API_KEYS).url
    response = client.get(f"{url}/v1/streams/{'A' * 48}/events", headers=bearer(ALICE))
    assert_refused(response, 403, FORBIDDEN)


def test_stream_tokens_open_one_stream_until_they_expire(client, gateway):
    server = gateway(**API_KEYS)
    url = server.url
    first_id, first_url = created(client, url, ALICE)
    second_id, second_url = created(client, url, ALICE)
    token = first_url.split("token=")[1]
    # A token for the first stream does not open the second.
    response = client.get(f"{url}/v1/streams/{second_id}/events?token={token}")
    assert_refused(response, 401, INVALID)
    # An altered token (expiry moved on, or signature changed) is refused.
    expiry, signature = token.split(".")
    flipped = signature[:-1] + ("B" if signature.endswith("A") else "A")
    for forged in (f"{int(expiry) + 3600}.{signature}", f"{expiry}.{flipped}", "x"):
        response = client.get(f"{url}/v1/streams/{first_id}/events?token={forged}")
        assert_refused(response, 401, INVALID)
    # An expired one, issued by the gateway's own key, too.
    expired = server.state.auth.tokens.issue(first_id, now=time.time() - 3600)
    response = client.get(f"{url}/v1/streams/{first_id}/events?token={expired}")
    assert_refused(response, 401, INVALID)
    # Within its life, a reconnect with Last-Event-ID resumes.
    events = read_events(client, first_url)
    assert [e.id for e in events] == ["1", "2", "3", "4", "5"]
    resumed = read_events(client, first_url, headers={"Last-Event-ID": "2"})
    assert [e.id for e in resumed] == ["3", "4", "5"]
    assert [e.event for e in read_events(client, second_url)][-1] == "done"


# --- JWT ---------------------------------------------------------------------------------


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"sub": "user-1", "exp": now + 300, "iat": now, "iss": ISSUER, "aud": AUDIENCE}
    base.update(changes)
    return {key: value for key, value in base.items() if value is not None}


def jwt_settings(**jwt_config: Any) -> dict[str, Any]:
    config = {"issuer": ISSUER, "audience": AUDIENCE, "leeway": 5, **jwt_config}
    return {"auth": {"mode": "jwt", "jwt": config}}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_token(payload: dict[str, Any], secret: bytes) -> str:
    """A hand-made HS256 token: PyJWT refuses to sign with a PEM key as the secret."""
    signing_input = f"{b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}."
    signing_input += b64(json.dumps(payload).encode())
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def unsigned_token(payload: dict[str, Any]) -> str:
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{b64(json.dumps(payload).encode())}."


def test_jwt_hs256(client, gateway, simulator):
    url = gateway(**jwt_settings(secret=JWT_SECRET)).url
    good = jwt.encode(claims(), JWT_SECRET, algorithm="HS256")
    response = client.post(f"{url}/v1/streams", json=body(marker()), headers=bearer(good))
    assert response.status_code == 201, response.text
    response = client.post(f"{url}/api/stream", json={"message": "x"}, headers={"X-Auth": good})
    assert response.status_code == 200

    now = int(time.time())
    refused = {
        "expired": jwt.encode(claims(exp=now - 60), JWT_SECRET, algorithm="HS256"),
        "not yet valid": jwt.encode(claims(nbf=now + 120), JWT_SECRET, algorithm="HS256"),
        "forged": jwt.encode(claims(), "another-secret-" + "0" * 60, algorithm="HS256"),
        "alg none": unsigned_token(claims()),
        "wrong audience": jwt.encode(claims(aud="other"), JWT_SECRET, algorithm="HS256"),
        "wrong issuer": jwt.encode(claims(iss="https://evil.test"), JWT_SECRET, algorithm="HS256"),
        "no exp": jwt.encode(claims(exp=None), JWT_SECRET, algorithm="HS256"),
        "no sub": jwt.encode(claims(sub=None), JWT_SECRET, algorithm="HS256"),
        "HS512 not allowed": jwt.encode(claims(), JWT_SECRET, algorithm="HS512"),
        "garbage": "not.a.jwt",
    }
    for name, token in refused.items():
        word = marker()
        response = client.post(f"{url}/v1/streams", json=body(word), headers=bearer(token))
        assert response.status_code == 401, name
        assert response.json() == INVALID, name
        assert simulator.sim.find(word) == [], name


def test_jwt_leeway_accepts_small_clock_skew(client, gateway):
    url = gateway(**jwt_settings(secret=JWT_SECRET)).url
    token = jwt.encode(claims(exp=int(time.time()) - 2), JWT_SECRET, algorithm="HS256")
    response = client.post(f"{url}/v1/streams", json=body(marker()), headers=bearer(token))
    assert response.status_code == 201, response.text


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_jwt_rs256_and_algorithm_confusion(client, gateway, simulator, tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = tmp_path / "public.pem"
    public.write_bytes(pem(key))
    url = gateway(**jwt_settings(algorithms=["RS256"], public_key_file=str(public))).url
    good = jwt.encode(claims(), key, algorithm="RS256")
    response = client.post(f"{url}/v1/streams", json=body(marker()), headers=bearer(good))
    assert response.status_code == 201, response.text

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    refused = {
        # HS/RS confusion: HMAC "signed" with the gateway's own public key as the secret.
        "HS256 with the public key": hs256_token(claims(), pem(key)),
        "alg none": unsigned_token(claims()),
        "another RSA key": jwt.encode(claims(), other, algorithm="RS256"),
        "ES256": jwt.encode(claims(), ec.generate_private_key(ec.SECP256R1()), algorithm="ES256"),
    }
    for name, token in refused.items():
        word = marker()
        response = client.post(f"{url}/v1/streams", json=body(word), headers=bearer(token))
        assert (response.status_code, response.json()) == (401, INVALID), name
        assert simulator.sim.find(word) == [], name


def test_jwt_es256_from_a_jwks_file_by_kid(client, gateway, tmp_path):
    keys = {kid: ec.generate_private_key(ec.SECP256R1()) for kid in ("k1", "k2")}
    jwks = {"keys": []}
    for kid, key in keys.items():
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
        jwks["keys"].append({**jwk, "kid": kid, "alg": "ES256", "use": "sig"})
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks))
    url = gateway(**jwt_settings(algorithms=["ES256"], jwks_file=str(path))).url
    for kid, key in keys.items():
        token = jwt.encode(claims(sub=kid), key, algorithm="ES256", headers={"kid": kid})
        response = client.post(f"{url}/v1/streams", json=body(marker()), headers=bearer(token))
        assert response.status_code == 201, response.text
    wrong_kid = jwt.encode(claims(), keys["k1"], algorithm="ES256", headers={"kid": "k2"})
    response = client.post(f"{url}/v1/streams", json=body(marker()), headers=bearer(wrong_kid))
    assert (response.status_code, response.json()) == (401, INVALID)


def test_jwt_subjects_own_their_streams(client, gateway):
    url = gateway(**jwt_settings(secret=JWT_SECRET)).url
    alice = jwt.encode(claims(sub="alice"), JWT_SECRET, algorithm="HS256")
    bob = jwt.encode(claims(sub="bob"), JWT_SECRET, algorithm="HS256")
    stream_id, _ = created(client, url, alice)
    assert_refused(
        client.delete(f"{url}/v1/streams/{stream_id}", headers=bearer(bob)), 403, FORBIDDEN
    )
    # A new token for the same subject is the same caller.
    again = jwt.encode(claims(sub="alice", iat=1), JWT_SECRET, algorithm="HS256")
    assert client.delete(f"{url}/v1/streams/{stream_id}", headers=bearer(again)).status_code == 204


# --- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"auth": {"mode": "api_key"}}, "mode api_key needs at least one key digest"),
        ({"auth": {"api_keys": ["abc"]}}, "auth.api_keys.0: String should match pattern"),
        ({"auth": {"mode": "jwt"}}, "HS algorithms need the secret in $SSE_GATEWAY_JWT_SECRET"),
        ({"auth": {"jwt": {"secret": "short"}}}, "jwt.secret: at least 32 bytes"),
        (
            {"auth": {"mode": "jwt", "jwt": {"algorithms": ["RS256"]}}},
            "public-key algorithms need public_key_file or jwks_file",
        ),
        (
            {"auth": {"jwt": {"algorithms": ["HS256", "RS256"]}}},
            "list HMAC (HS*) or public-key algorithms, not both",
        ),
        ({"auth": {"jwt": {"algorithms": ["none"]}}}, "auth.jwt.algorithms.0"),
        (
            {"cors": {"allowed_origins": ["*"], "allow_credentials": True}},
            "allow_credentials cannot be used with the origin '*'",
        ),
    ],
)
def test_unusable_auth_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError) as raised:
        load_settings(os.devnull, environ={}, overrides=overrides)
    assert message in str(raised.value)


def test_secrets_come_from_the_environment_only(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("auth:\n  jwt:\n    secret: in-a-file\n")
    with pytest.raises(ConfigError, match=r"auth\.jwt\.secret: secrets are not read from files"):
        load_settings(config, environ={})
    config.write_text("auth:\n  mode: jwt\n  jwt:\n    secret_env: MY_JWT\n")
    env = {"MY_JWT": "from-env" * 4, "SSE_GATEWAY_TOKEN_SECRET": "tokens"}
    settings = load_settings(config, environ=env)
    assert settings.auth.jwt.secret is not None
    assert settings.auth.jwt.secret.get_secret_value() == "from-env" * 4
    assert settings.auth.token_secret is not None
    assert settings.auth.token_secret.get_secret_value() == "tokens"
    assert "from-env" not in settings.model_dump_json()


@pytest.mark.stores("memory", "redis")
def test_a_shared_token_secret_lets_another_instance_open_the_stream(client, gateway, store_name):
    shared = {**API_KEYS, "auth": {**API_KEYS["auth"], "token_secret": "one-secret-for-all"}}
    first, second = gateway(**shared), gateway(**shared)
    _, events_url = created(client, first.url, ALICE)
    path = events_url.removeprefix(first.url)
    if store_name == "redis":  # the stream is shared, and the second instance serves it
        events = read_events(client, f"{second.url}{path}")
        assert [e.event for e in events] == ["token"] * 4 + ["done"]
    else:  # the memory store keeps it on the first; the token is accepted: 404, not 401
        response = client.get(f"{second.url}{path}")
        assert (response.status_code, response.json()["error"]["code"]) == (404, "not_found")
    other = gateway(**API_KEYS)  # its own random key
    assert_refused(client.get(f"{other.url}{path}"), 401, INVALID)


def test_hash_key_cli(capsys, monkeypatch):
    assert main(["hash-key", ALICE]) == 0
    assert capsys.readouterr().out == hash_key(ALICE) + "\n"
    assert hash_key(ALICE) == hashlib.sha256(ALICE.encode()).hexdigest()
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{BOB}\n"))
    assert main(["hash-key"]) == 0
    assert capsys.readouterr().out == hashlib.sha256(BOB.encode()).hexdigest() + "\n"


def test_open_gateway_on_a_public_address_warns(simulator, caplog, gateway):
    public = test_settings(simulator, server={"host": "0.0.0.0"})
    assert len(startup_warnings(public)) == 1
    assert startup_warnings(test_settings(simulator)) == []
    assert startup_warnings(test_settings(simulator, server={"host": "::1"})) == []
    with caplog.at_level(logging.WARNING, logger="gateway.app"):
        gateway(server={"host": "0.0.0.0"})
    warnings = [r.getMessage() for r in caplog.records if r.name == "gateway.app"]
    assert len(warnings) == 1
    assert warnings[0].startswith("SECURITY: auth.mode is none and the gateway listens on 0.0.0.0")


# --- CORS --------------------------------------------------------------------------------


def preflight(client: httpx.Client, url: str, origin: str) -> httpx.Response:
    return client.options(
        f"{url}/v1/streams",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )


def test_cors_allows_configured_origins_only(client, gateway):
    app = "https://app.example"
    url = gateway(**API_KEYS, cors={"allowed_origins": [app]}).url
    response = preflight(client, url, app)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == app
    assert "POST" in response.headers["access-control-allow-methods"]
    assert "authorization" in response.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in response.headers
    response = preflight(client, url, "https://evil.example")
    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers
    # A refused request from the allowed origin is readable by its page, others are not.
    response = client.post(f"{url}/v1/streams", json=body("x"), headers={"Origin": app})
    assert response.status_code == 401
    assert response.headers["access-control-allow-origin"] == app
    response = client.post(
        f"{url}/v1/streams", json=body("x"), headers={"Origin": "https://evil.example"}
    )
    assert "access-control-allow-origin" not in response.headers


def test_cors_is_off_by_default(client, url):
    response = preflight(client, url, "https://app.example")
    assert response.status_code == 405
    assert "access-control-allow-origin" not in response.headers


# --- logs --------------------------------------------------------------------------------


@pytest.fixture
def captured_logs():
    """Every log line as the gateway writes it (JSON, with its redaction)."""
    output = io.StringIO()
    handler = logging.StreamHandler(output)
    handler.setFormatter(logs.JsonFormatter(secrets=["sk-test-secret-key"]))
    handler.addFilter(logs.ContextFilter())
    with root_handler(handler, logging.INFO):
        yield output


def test_no_secret_or_prompt_reaches_the_logs(client, gateway, captured_logs):
    server = gateway(**API_KEYS)
    word = marker()
    response = client.post(
        f"{server.url}/v1/streams", json=body(word, "[[sim tokens=2]]"), headers=bearer(ALICE)
    )
    events_url = server.url + response.json()["events_url"]
    token = events_url.split("token=")[1]
    assert [e.event for e in read_events(client, events_url)][-1] == "done"
    client.post(f"{server.url}/v1/streams", json=body(word), headers={"X-Auth": BOB})
    client.post(f"{server.url}/v1/streams", json=body(word), headers=bearer("guess-" + ALICE))
    client.get(f"{server.url}/v1/streams/x/events?token=forged.{token}")
    # The generation logs its end just after its readers saw it.
    wait_until(lambda: '"event": "stream finished"' in captured_logs.getvalue())
    output = captured_logs.getvalue()
    assert '"event": "request finished"' in output
    assert "[REDACTED]" in output  # the token in the events URL's query
    for secret in (ALICE, BOB, token, token.split(".")[1], "sk-test-secret-key", word):
        assert secret not in output


def test_logging_content_logs_prompt_and_completion(client, gateway, captured_logs):
    url = gateway(logging={"content": True}).url
    word = marker()
    response = client.post(f"{url}/v1/streams", json=body(word, "[[sim tokens=3]]"))
    events_url = f"{url}{response.json()['events_url']}"
    answer = text_of(read_events(client, events_url))

    def finished_lines() -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in captured_logs.getvalue().splitlines()]
        return [line for line in lines if line["event"] == "stream finished"]

    # The generation logs its end just after its readers saw it: wait for the line.
    wait_until(lambda: bool(finished_lines()))
    (finished,) = finished_lines()
    assert word in json.loads(finished["prompt"])[0]["content"]
    assert finished["completion"] == answer


# --- the OpenAI-compatible endpoints -----------------------------------------------------


def test_chat_completions_need_credentials_and_hold_a_slot(client, gateway, simulator):
    limits = {"concurrent_streams_per_identity": 1}
    url = gateway(**API_KEYS, limits=limits).url
    word = marker()
    request = {"model": "sim-1", "messages": [{"role": "user", "content": word}]}
    response = client.post(f"{url}/v1/chat/completions", json=request)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert response.headers["www-authenticate"] == CHALLENGE
    assert simulator.sim.find(word) == []
    assert client.get(f"{url}/v1/models").status_code == 401
    assert client.get(f"{url}/v1/models", headers=bearer(ALICE)).status_code == 200
    for _ in range(2):  # the slot is free again once an answer is complete
        response = client.post(f"{url}/v1/chat/completions", json=request, headers=bearer(ALICE))
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["finish_reason"] == "stop"
