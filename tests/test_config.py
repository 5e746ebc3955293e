"""Settings (gateway/config.py, config_loader.py, config_reference.py): defaults, the YAML
file, environment overrides, secrets, the README's reference, CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import ConfigError, Settings, load_settings
from gateway.config_reference import reference

REPO = Path(__file__).resolve().parent.parent
SECRET = "sk-test-DO-NOT-LEAK-4f9a2b7c"


def write(tmp_path: Path, text: str, name: str = "gateway.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- defaults and files ----------------------------------------------------


def test_defaults_when_there_is_no_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./config.yaml here
    settings = load_settings(environ={})
    assert settings == Settings()
    assert settings.server.host == "127.0.0.1"
    assert settings.server.port == 8000
    assert settings.upstream.base_url is None
    assert settings.upstream.api_key_env == "OPENAI_API_KEY"
    assert settings.upstream.api_key is None
    assert settings.upstream.timeouts.connect == 5.0
    assert settings.upstream.timeouts.idle == 30.0
    assert settings.sse.retry_ms == 2000
    assert settings.streams.store == "memory"


def test_empty_file_gives_defaults():
    assert load_settings(os.devnull, environ={}) == Settings()


def test_default_file_is_config_yaml_in_the_working_directory(tmp_path, monkeypatch):
    write(tmp_path, "server:\n  port: 9123\n", name="config.yaml")
    monkeypatch.chdir(tmp_path)
    assert load_settings(environ={}).server.port == 9123


def test_repo_config_yaml_loads_with_its_values():
    path = REPO / "config.yaml"
    settings = load_settings(path, environ={})
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert set(raw) >= {"server", "upstream", "sse", "streams", "limits"}
    required = {
        "server": {"host", "port", "drain_timeout"},
        "upstream": {"base_url", "api_key_env", "model", "retries", "timeouts"},
        "sse": {"heartbeat", "retry_ms", "send_timeout"},
        "streams": {"store", "disconnect_grace", "retention", "max_events"},
        "limits": {"max_body_bytes", "max_messages", "max_concurrent_streams"},
    }
    for section, keys in required.items():
        assert set(raw[section]) >= keys, section
    assert set(raw["upstream"]["timeouts"]) >= {"connect", "first_token", "idle", "total"}
    assert raw["upstream"]["api_key_env"] == "OPENAI_API_KEY"
    assert "api_key" not in raw["upstream"]
    # Every value in the file is the value loaded.
    for section, values in raw.items():
        for key, value in values.items():
            loaded = getattr(getattr(settings, section), key)
            if isinstance(value, dict):
                for sub, subvalue in value.items():
                    assert getattr(loaded, sub) == subvalue, f"{section}.{key}.{sub}"
            else:
                assert loaded == value, f"{section}.{key}"


def test_file_values_are_typed(tmp_path):
    path = write(
        tmp_path,
        "server:\n  port: '8080'\nupstream:\n  timeouts:\n    idle: 2\n  base_url: http://u/v1\n",
    )
    settings = load_settings(path, environ={})
    assert settings.server.port == 8080
    assert settings.upstream.timeouts.idle == 2.0
    assert isinstance(settings.upstream.timeouts.idle, float)
    assert settings.upstream.base_url == "http://u/v1"
    # Keys the file does not set keep their defaults.
    assert settings.upstream.timeouts.connect == 5.0
    assert settings.sse == Settings().sse


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("upstream:\n  timeouts:\n    connect: -1\n", "upstream.timeouts.connect"),
        ("upstream:\n  timeouts:\n    connect: 0\n", "upstream.timeouts.connect"),
        ("upstream:\n  timeouts:\n    connect: soon\n", "upstream.timeouts.connect"),
        ("upstream:\n  timeouts:\n    idle: [1]\n", "upstream.timeouts.idle"),
        ("server:\n  port: 70000\n", "server.port"),
        ("server:\n  port: eighty\n", "server.port"),
        ("upstream:\n  retries: -1\n", "upstream.retries"),
        ("sse:\n  heartbeat: 0\n", "sse.heartbeat"),
        ("streams:\n  store: sqlite\n", "streams.store"),
        ("streams:\n  max_events: 1\n", "streams.max_events"),
        ("limits:\n  max_concurrent_streams: 0\n", "limits.max_concurrent_streams"),
        ("server: 5\n", "server"),
        ("upstream:\n  timeouts: fast\n", "upstream.timeouts"),
    ],
)
def test_bad_value_names_the_dotted_key(tmp_path, text, key):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert f"{key}:" in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        "upstream: 5\n",
        "upstream: [1, 2]\n",
        "upstream: just text\n",
        "upstream: my api_key here\n",
    ],
)
def test_upstream_section_that_is_not_a_mapping_is_a_config_error(tmp_path, text):
    # Must be a ConfigError naming the section, never a TypeError (a traceback at start).
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert "upstream" in str(info.value)
    assert "api_key" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("server:\n  hots: 0.0.0.0\n", "server.hots"),
        ("upstream:\n  timeouts:\n    conect: 1\n", "upstream.timeouts.conect"),
        ("bogus:\n  a: 1\n", "bogus"),
        ("sse:\n  heartbeat: 1\n  ping: 2\n", "sse.ping"),
    ],
)
def test_unknown_key_is_refused_by_name(tmp_path, text, key):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert f"{key}:" in str(info.value)


@pytest.mark.parametrize("text", ["- server\n- upstream\n", "just a string\n", "42\n"])
def test_file_that_is_not_a_mapping(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert str(path) in str(info.value)
    assert "mapping" in str(info.value)


def test_yaml_syntax_error(tmp_path):
    path = write(tmp_path, "server:\n  port: [8000\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert str(path) in str(info.value)


def test_missing_explicit_file(tmp_path):
    path = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert str(path) in str(info.value)


def test_missing_file_named_by_gateway_config(tmp_path):
    path = tmp_path / "nowhere.yaml"
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"GATEWAY_CONFIG": str(path)})
    assert str(path) in str(info.value)


# --- environment overrides ------------------------------------------------


def test_env_overrides_a_key():
    settings = load_settings(
        os.devnull,
        environ={"GATEWAY_SERVER__PORT": "9001", "GATEWAY_UPSTREAM__BASE_URL": "http://up/v1"},
    )
    assert settings.server.port == 9001
    assert settings.upstream.base_url == "http://up/v1"
    assert settings.server.host == "127.0.0.1"


def test_env_overrides_nested_key():
    settings = load_settings(os.devnull, environ={"GATEWAY_UPSTREAM__TIMEOUTS__IDLE": "2.5"})
    assert settings.upstream.timeouts.idle == 2.5
    assert settings.upstream.timeouts.connect == 5.0


def test_env_overrides_the_file(tmp_path):
    path = write(tmp_path, "server:\n  port: 9000\n  host: 0.0.0.0\nupstream:\n  retries: 4\n")
    settings = load_settings(
        path, environ={"GATEWAY_SERVER__PORT": "9001", "GATEWAY_UPSTREAM__TIMEOUTS__TOTAL": "50"}
    )
    assert settings.server.port == 9001
    assert settings.server.host == "0.0.0.0"
    assert settings.upstream.retries == 4
    assert settings.upstream.timeouts.total == 50.0


def test_env_json_object_value():
    settings = load_settings(
        os.devnull, environ={"GATEWAY_UPSTREAM__TIMEOUTS": '{"idle": 3, "connect": 1.5}'}
    )
    assert settings.upstream.timeouts.idle == 3.0
    assert settings.upstream.timeouts.connect == 1.5
    assert settings.upstream.timeouts.total == 600.0


def test_env_json_list_value_is_parsed_as_a_list():
    settings = load_settings(
        os.devnull,
        environ={
            "GATEWAY_SERVER__TRUSTED_PROXIES": '["10.0.0.1", "10.0.0.2"]',
            "GATEWAY_LIMITS__ALLOWED_MODELS": '["a"]',
        },
    )
    assert settings.server.trusted_proxies == ["10.0.0.1", "10.0.0.2"]
    assert settings.limits.allowed_models == ["a"]


def test_env_value_that_only_looks_like_json_stays_a_string():
    settings = load_settings(os.devnull, environ={"GATEWAY_UPSTREAM__MODEL": "[not json"})
    assert settings.upstream.model == "[not json"


@pytest.mark.parametrize(
    ("name", "value", "key"),
    [
        ("GATEWAY_UPSTREAM__TIMEOUTS__IDLE", "soon", "upstream.timeouts.idle"),
        ("GATEWAY_SERVER__PORT", "http", "server.port"),
        ("GATEWAY_SERVER__PORT", "-1", "server.port"),
        ("GATEWAY_UPSTREAM__RETRIES", "1.5", "upstream.retries"),
        ("GATEWAY_SERVER__NOPE", "1", "server.nope"),
        ("GATEWAY_SERVR__PORT", "1", "servr"),
        ("GATEWAY_SERVER__TRUSTED_PROXIES", '["10.0.0.1"', "server.trusted_proxies"),
        ("GATEWAY_UPSTREAM__TIMEOUTS", '{"idle": 3', "upstream.timeouts"),
    ],
)
def test_invalid_env_value_names_the_variable_and_key(name, value, key):
    with pytest.raises(ConfigError) as info:
        load_settings(os.devnull, environ={name: value})
    assert f"{key}:" in str(info.value)
    assert name in str(info.value)


def test_invalid_value_inside_env_json_object_names_the_variable():
    name = "GATEWAY_UPSTREAM__TIMEOUTS"
    with pytest.raises(ConfigError) as info:
        load_settings(os.devnull, environ={name: '{"idle": "soon"}'})
    assert "upstream.timeouts.idle:" in str(info.value)
    assert name in str(info.value)


def test_env_cannot_set_a_key_inside_a_scalar(tmp_path):
    path = write(tmp_path, "server:\n  port: 9000\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={"GATEWAY_SERVER__PORT__X": "1"})
    assert "server.port" in str(info.value)
    assert "GATEWAY_SERVER__PORT__X" in str(info.value)


def test_unrelated_env_vars_are_ignored():
    settings = load_settings(os.devnull, environ={"SERVER__PORT": "1", "GATEWAYX": "y"})
    assert settings == Settings()


def test_gateway_config_picks_another_file_and_env_still_overrides(tmp_path):
    path = write(tmp_path, "server:\n  port: 9100\nupstream:\n  model: other-model\n")
    settings = load_settings(
        environ={"GATEWAY_CONFIG": str(path), "GATEWAY_SERVER__PORT": "9200"},
    )
    assert settings.server.port == 9200
    assert settings.upstream.model == "other-model"


def test_gateway_config_replaces_config_yaml(tmp_path, monkeypatch):
    write(tmp_path, "server:\n  port: 9300\n  host: 10.0.0.1\n", name="config.yaml")
    other = write(tmp_path, "server:\n  port: 9400\n", name="other.yaml")
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ={"GATEWAY_CONFIG": str(other)})
    assert settings.server.port == 9400
    assert settings.server.host == "127.0.0.1"  # not merged with ./config.yaml


def test_explicit_path_beats_gateway_config(tmp_path):
    chosen = write(tmp_path, "server:\n  port: 9500\n", name="chosen.yaml")
    ignored = write(tmp_path, "server:\n  port: 9600\n", name="ignored.yaml")
    settings = load_settings(chosen, environ={"GATEWAY_CONFIG": str(ignored)})
    assert settings.server.port == 9500


def test_overrides_apply_last():
    settings = load_settings(
        os.devnull,
        environ={"GATEWAY_SERVER__PORT": "9001", "GATEWAY_SERVER__HOST": "0.0.0.0"},
        overrides={"server": {"port": 0}},
    )
    assert settings.server.port == 0
    assert settings.server.host == "0.0.0.0"


def test_settings_are_frozen():
    settings = load_settings(os.devnull, environ={})
    with pytest.raises(ValueError):
        settings.server.port = 1  # type: ignore[misc]


# --- the API key -------------------------------------------------------------


def test_api_key_from_openai_api_key():
    settings = load_settings(os.devnull, environ={"OPENAI_API_KEY": SECRET})
    assert settings.upstream.api_key is not None
    assert settings.upstream.api_key.get_secret_value() == SECRET


def test_no_api_key_is_none():
    assert load_settings(os.devnull, environ={}).upstream.api_key is None


def test_api_key_from_the_variable_named_in_the_file(tmp_path):
    path = write(tmp_path, "upstream:\n  api_key_env: MY_LLM_KEY\n")
    settings = load_settings(path, environ={"MY_LLM_KEY": SECRET, "OPENAI_API_KEY": "sk-other"})
    assert settings.upstream.api_key_env == "MY_LLM_KEY"
    assert settings.upstream.api_key is not None
    assert settings.upstream.api_key.get_secret_value() == SECRET


def test_api_key_from_the_variable_named_by_env():
    settings = load_settings(
        os.devnull,
        environ={
            "GATEWAY_UPSTREAM__API_KEY_ENV": "MY_LLM_KEY",
            "MY_LLM_KEY": SECRET,
            "OPENAI_API_KEY": "sk-other",
        },
    )
    assert settings.upstream.api_key is not None
    assert settings.upstream.api_key.get_secret_value() == SECRET


def test_api_key_env_named_but_unset_gives_no_key(tmp_path):
    path = write(tmp_path, "upstream:\n  api_key_env: MY_LLM_KEY\n")
    settings = load_settings(path, environ={"OPENAI_API_KEY": "sk-other"})
    assert settings.upstream.api_key is None


@pytest.mark.parametrize("value", ["sk-in-a-file", "null", "''"])
def test_api_key_in_a_file_is_refused(tmp_path, value):
    path = write(tmp_path, f"upstream:\n  api_key: {value}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={"OPENAI_API_KEY": SECRET})
    assert "upstream.api_key" in str(info.value)
    assert "sk-in-a-file" not in str(info.value)


def test_api_key_never_appears_in_representations():
    settings = load_settings(os.devnull, environ={"OPENAI_API_KEY": SECRET})
    assert settings.upstream.api_key is not None
    for text in (
        repr(settings),
        str(settings),
        settings.model_dump_json(),
        str(settings.model_dump()),
        repr(settings.upstream),
        str(settings.upstream),
        settings.upstream.model_dump_json(),
        f"{settings}",
        f"{settings.upstream.api_key}",
    ):
        assert SECRET not in text
    assert "api_key" not in settings.model_dump()["upstream"]


def test_api_key_never_appears_in_config_errors():
    with pytest.raises(ConfigError) as info:
        load_settings(os.devnull, environ={"OPENAI_API_KEY": SECRET, "GATEWAY_SERVER__PORT": "bad"})
    assert "server.port" in str(info.value)
    assert SECRET not in str(info.value)


# --- one rule for every secret ------------------------------------------------------

#: Each secret, the file that names its variable, and the default variable.
SECRETS = [
    ("upstream.api_key", "upstream:\n  api_key_env: MY_VAR\n", "OPENAI_API_KEY"),
    ("auth.token_secret", "auth:\n  token_secret_env: MY_VAR\n", "SSE_GATEWAY_TOKEN_SECRET"),
    ("auth.jwt.secret", "auth:\n  jwt:\n    secret_env: MY_VAR\n", "SSE_GATEWAY_JWT_SECRET"),
    (
        "routes.m.0.api_key",
        "routes:\n  m:\n    - {base_url: 'http://a/v1', api_key_env: MY_VAR}\n",
        "OPENAI_API_KEY",
    ),
]
LONG_SECRET = "s" * 40  # the JWT secret needs 32 bytes


def secret_of(settings: Settings, dotted: str) -> str | None:
    """The secret at a dotted key such as `routes.m.0.api_key`, or None."""
    node: Any = settings
    for part in dotted.split("."):
        if isinstance(node, dict):
            node = node[part]
        elif isinstance(node, list):
            node = node[int(part)]
        else:
            node = getattr(node, part)
    return None if node is None else node.get_secret_value()


@pytest.mark.parametrize(("key", "text", "default"), SECRETS)
def test_each_secret_comes_from_the_variable_its_env_key_names(tmp_path, key, text, default):
    path = write(tmp_path, text)
    settings = load_settings(path, environ={"MY_VAR": LONG_SECRET, default: "t" * 40})
    assert secret_of(settings, key) == LONG_SECRET
    assert secret_of(load_settings(path, environ={default: "t" * 40}), key) is None


@pytest.mark.parametrize(("key", "text", "default"), SECRETS)
def test_each_secret_has_a_default_variable(key, text, default):
    if key.startswith("routes."):
        overrides = {"routes": {"m": [{"base_url": "http://a/v1"}]}}
    else:
        overrides = {}
    settings = load_settings(os.devnull, environ={default: LONG_SECRET}, overrides=overrides)
    assert secret_of(settings, key) == LONG_SECRET


@pytest.mark.parametrize(("key", "text", "default"), SECRETS)
def test_each_secret_in_a_file_is_refused_by_its_key(tmp_path, key, text, default):
    name = key.rsplit(".", 1)[1]
    path = write(tmp_path, text.replace(f"{name}_env: MY_VAR", f"{name}: {LONG_SECRET}"))
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={default: "t" * 40})
    assert f"{key}: secrets are not read from files" in str(info.value)
    assert LONG_SECRET not in str(info.value)


def test_a_secret_given_in_overrides_is_kept_and_the_overrides_are_not_changed():
    overrides = {"upstream": {"api_key": "sk-given"}, "auth": {"jwt": {"leeway": 1}}}
    copy = {"upstream": {"api_key": "sk-given"}, "auth": {"jwt": {"leeway": 1}}}
    env = {"OPENAI_API_KEY": SECRET, "SSE_GATEWAY_JWT_SECRET": LONG_SECRET}
    settings = load_settings(os.devnull, environ=env, overrides=overrides)
    assert settings.upstream.api_key is not None
    assert settings.upstream.api_key.get_secret_value() == "sk-given"
    assert settings.auth.jwt.secret is not None
    assert overrides == copy


def test_settings_built_directly_read_neither_file_nor_environment(tmp_path, monkeypatch):
    write(tmp_path, "server:\n  port: 9999\n", name="config.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("GATEWAY_SERVER__PORT", "9998")
    settings = Settings()
    assert settings.server.port == 8000
    assert settings.upstream.api_key is None


# --- the README's reference ------------------------------------------------------------


def test_readme_configuration_reference_is_the_settings_model():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    begin = readme.index("<!-- config reference:")
    table = readme[readme.index("-->", begin) + 3 : readme.index("<!-- end of config reference")]
    assert table.strip() == reference().strip(), (
        "README.md's configuration table differs from gateway/config.py: paste the output "
        "of `python -c 'import gateway.config_reference as c; print(c.reference())'`"
    )


def test_reference_has_every_setting_with_a_meaning_and_no_secret():
    rows = [line.split(" | ") for line in reference().splitlines()[2:]]
    keys = [row[0].strip("| `") for row in rows]
    assert len(keys) == len(set(keys))
    assert {"server.port", "upstream.timeouts.total", "routes", "auth.jwt.secret_env"} <= set(keys)
    assert not {"upstream.api_key", "auth.token_secret", "auth.jwt.secret"} & set(keys)
    assert all(row[2].strip(" |") for row in rows), "a setting without a docstring"


# --- the command line ----------------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO):
    base = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    base["OPENAI_API_KEY"] = SECRET
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
        env={**base, **(env or {})},
        check=False,
    )


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("upstream:\n  timeouts:\n    connect: -1\n", "upstream.timeouts.connect"),
        ("server:\n  hots: x\n", "server.hots"),
        ("upstream: 5\n", "upstream"),
    ],
)
def test_cli_serve_with_bad_config_exits_with_the_key(tmp_path, text, key):
    path = write(tmp_path, text)
    result = run_cli("serve", "--config", str(path))
    assert result.returncode != 0
    assert key in result.stderr
    assert "Traceback" not in result.stderr
    assert SECRET not in result.stderr + result.stdout


def test_cli_serve_with_missing_config_file(tmp_path):
    path = tmp_path / "missing.yaml"
    result = run_cli("serve", "--config", str(path))
    assert result.returncode != 0
    assert str(path) in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_serve_with_bad_env_names_the_variable(tmp_path):
    result = run_cli(
        "serve", "--config", os.devnull, env={"GATEWAY_UPSTREAM__TIMEOUTS__IDLE": "soon"}
    )
    assert result.returncode != 0
    assert "upstream.timeouts.idle" in result.stderr
    assert "GATEWAY_UPSTREAM__TIMEOUTS__IDLE" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_section_with_every_key_commented_out_keeps_its_defaults(tmp_path):
    settings = load_settings(write(tmp_path, "server:\nupstream:\n"), environ={})
    assert settings.server.port == 8000
    assert settings.upstream.model == "sim-1"
