"""Settings: defaults < ledgerflow.toml < LEDGERFLOW_* < overrides, and errors naming the source."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from gateway.settings import Settings, SettingsError, is_loopback, load_settings


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # ./ledgerflow.toml is looked for here
    return tmp_path


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEDGERFLOW_PORT", "1")  # not read: only the env given counts
    settings = load_settings(env={})
    assert settings.db == "ledgerflow.db"
    assert (settings.transport, settings.host, settings.port) == ("stdio", "127.0.0.1", 8765)
    assert settings.tools == {} and settings.llm.model is None
    assert settings.webhook_secret is None and settings.auth_required is False
    assert "127.0.0.1:*" in settings.allowed_hosts
    assert "http://localhost:*" in settings.allowed_origins
    assert (settings.circuit.threshold, settings.circuit.reset_seconds) == (5, 30)
    assert settings.synchronous == "FULL" and settings.timer_interval_seconds == 1
    assert settings.policy.default_max_steps == 100 and settings.policy.tools.allow is None


def test_full_config_file(in_tmp: Path) -> None:
    write(
        in_tmp / "ledgerflow.toml",
        """
db = "data/prod.db"
transport = "http"
host = "0.0.0.0"
port = 9000
webhook_secret = "whsec_1"
allowed_hosts = ["ledger.example.org"]
synchronous = "NORMAL"
timer_interval_seconds = 0.5

[tools]
reserve_funds = "payments:reserve_funds"
all_payments = "examples.payments:TOOLS"

[llm]
model = "openai/gpt-4o-mini"
mock_replies = ["yes", "no"]

[policy]
default_max_steps = 50
max_steps_cap = 200
max_tokens_cap = 100000
max_cost_usd_cap = 2.5
allowed_models = ["openai/gpt-4o-mini"]

[policy.tools]
allow = ["reserve_funds"]
deny = ["erase"]

[circuit]
threshold = 3
reset_seconds = 10
""",
    )
    s = load_settings(env={})  # found in the working directory
    assert s.db == "data/prod.db" and s.transport == "http" and s.port == 9000
    assert s.auth_required is True  # the default for http
    assert s.webhook_secret is not None and s.webhook_secret.get_secret_value() == "whsec_1"
    assert "whsec_1" not in repr(s)
    assert s.tools["all_payments"] == "examples.payments:TOOLS"
    assert s.llm.mock_replies == ["yes", "no"]
    assert s.policy.max_cost_usd_cap == Decimal("2.5")
    assert (s.circuit.threshold, s.circuit.reset_seconds) == (3, 10)
    snapshot = s.policy.snapshot("prod")
    assert snapshot.tools_allow == ("reserve_funds",) and snapshot.tools_deny == ("erase",)
    assert (snapshot.max_steps, snapshot.max_tokens, snapshot.max_cost_usd) == (200, 100000, "2.5")
    assert snapshot.models_allow == ("openai/gpt-4o-mini",)


def test_precedence_toml_env_overrides(in_tmp: Path) -> None:
    config = write(
        in_tmp / "custom.toml",
        'port = 9000\nhost = "127.0.0.2"\n[circuit]\nthreshold = 7\n[tools]\na = "m:a"\n',
    )
    env = {
        "LEDGERFLOW_PORT": "9001",
        "LEDGERFLOW_CIRCUIT__RESET_SECONDS": "12",
        "LEDGERFLOW_TOOLS__B": "m:b",
    }
    s = load_settings(config, env=env)
    assert (s.port, s.host) == (9001, "127.0.0.2")  # env over toml; toml over default
    assert (s.circuit.threshold, s.circuit.reset_seconds) == (7, 12)  # tables merge by key
    assert s.tools == {"a": "m:a", "b": "m:b"}

    s = load_settings(config, {"port": 9002, "circuit.threshold": 2, "host": None}, env)
    assert (s.port, s.circuit.threshold, s.host) == (9002, 2, "127.0.0.2")  # None: not given
    s = load_settings(config, {"circuit": {"reset_seconds": 1}}, env)
    assert (s.circuit.threshold, s.circuit.reset_seconds) == (7, 1)


def test_auth_default_follows_the_final_transport(in_tmp: Path) -> None:
    write(in_tmp / "ledgerflow.toml", 'transport = "http"\n')
    assert load_settings(env={}).auth_required is True
    assert load_settings(env={"LEDGERFLOW_TRANSPORT": "stdio"}).auth_required is False
    assert load_settings(env={"LEDGERFLOW_AUTH_REQUIRED": "false"}).auth_required is False
    write(in_tmp / "ledgerflow.toml", "auth_required = true\n")
    assert load_settings(env={}).auth_required is True


def test_env_ignores_other_and_empty_variables() -> None:
    env = {"LEDGERFLOW_KEK": "base64key", "LEDGERFLOW_PORT": "", "PATH": "/bin"}
    assert load_settings(env=env).port == 8765
    env = {"ledgerflow_port": "7000", "LEDGERFLOW_ALLOWED_HOSTS": '["a.example:*"]'}
    s = load_settings(env=env)
    assert (s.port, s.allowed_hosts) == (7000, ["a.example:*"])


# --- errors -----------------------------------------------------------------------------------


def problems(excinfo: pytest.ExceptionInfo[SettingsError]) -> list[str]:
    return excinfo.value.problems


def test_config_errors_name_the_file_and_the_key(in_tmp: Path) -> None:
    write(
        in_tmp / "ledgerflow.toml",
        """
port = 70000
webhook_secret = 12345678
[circuit]
threshold = "five"
treshold = 3
[tools]
bad = "no-colon"
[llm]
mock_replies = ["ok", 3]
""",
    )
    with pytest.raises(SettingsError) as caught:
        load_settings(env={})
    assert sorted(problems(caught)) == sorted(
        [
            "ledgerflow.toml: port: Input should be less than or equal to 65535",
            "ledgerflow.toml: webhook_secret: Input should be a valid string",
            "ledgerflow.toml: [circuit] threshold: Input should be a valid integer, unable to "
            "parse string as an integer",
            "ledgerflow.toml: [circuit] treshold: unknown key; did you mean 'threshold'?",
            "ledgerflow.toml: [tools] bad: must be 'module:attribute', for example "
            "payments:reserve_funds",
            "ledgerflow.toml: [llm] mock_replies[1]: Input should be a valid string",
        ]
    )
    assert "12345678" not in str(caught.value)  # values are never echoed


def test_unknown_top_level_key_and_table(in_tmp: Path) -> None:
    config = write(in_tmp / "conf.toml", 'transpot = "http"\n[polcy]\nx = 1\n')
    with pytest.raises(SettingsError) as caught:
        load_settings(config, env={})
    assert problems(caught) == [
        f"{config}: transpot: unknown key; did you mean 'transport'?",
        f"{config}: polcy: unknown key; did you mean 'policy'?",
    ]


def test_invalid_literal_and_section_rule(in_tmp: Path) -> None:
    write(
        in_tmp / "ledgerflow.toml",
        'synchronous = "OFF"\n[policy]\ndefault_max_steps = 500\nmax_steps_cap = 100\n',
    )
    with pytest.raises(SettingsError) as caught:
        load_settings(env={})
    assert problems(caught) == [
        "ledgerflow.toml: [policy]: default_max_steps (500) exceeds max_steps_cap (100)",
        "ledgerflow.toml: synchronous: Input should be 'FULL' or 'NORMAL'",
    ]


def test_rule_across_layers_is_checked_on_the_merge(in_tmp: Path) -> None:
    write(in_tmp / "ledgerflow.toml", "[policy]\ndefault_max_steps = 500\nmax_steps_cap = 900\n")
    with pytest.raises(SettingsError, match=r"settings: \[policy\]: default_max_steps \(500\)"):
        load_settings(env={"LEDGERFLOW_POLICY__MAX_STEPS_CAP": "100"})


def test_invalid_toml_and_missing_file(in_tmp: Path) -> None:
    write(in_tmp / "ledgerflow.toml", "port = \n")
    with pytest.raises(SettingsError, match=r"^ledgerflow.toml: invalid TOML: .*line 1"):
        load_settings(env={})
    with pytest.raises(SettingsError, match=r"nope\.toml: no such file"):
        load_settings("nope.toml", env={})


def test_env_errors_name_the_variable() -> None:
    env = {
        "LEDGERFLOW_PORT": "http",
        "LEDGERFLOW_CIRCUIT__THRESHOLD": "0",
        "LEDGERFLOW_TOOLS": '{"a": 1}',
        "LEDGERFLOW_TRANSPORT": "grpc",
    }
    with pytest.raises(SettingsError) as caught:
        load_settings(env=env)
    assert sorted(problems(caught)) == sorted(
        [
            "LEDGERFLOW_PORT: Input should be a valid integer, unable to parse string as an "
            "integer",
            "LEDGERFLOW_CIRCUIT__THRESHOLD: Input should be greater than or equal to 1",
            "LEDGERFLOW_TOOLS: a: Input should be a valid string",
            "LEDGERFLOW_TRANSPORT: Input should be 'stdio' or 'http'",
        ]
    )


def test_env_list_must_be_json() -> None:
    with pytest.raises(SettingsError, match=r"^LEDGERFLOW_ALLOWED_HOSTS: not valid JSON"):
        load_settings(env={"LEDGERFLOW_ALLOWED_HOSTS": "a.example,b.example"})


def test_a_database_url_of_another_kind_is_refused_naming_the_key() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(overrides={"db": "mysql://app@db/ledger"}, env={})
    [problem] = problems(caught)
    assert problem.startswith("override db: unsupported database URL scheme 'mysql'")
    settings = load_settings(env={"LEDGERFLOW_DB": "postgresql://app@db/ledger?schema=lf"})
    assert settings.db == "postgresql://app@db/ledger?schema=lf"


def test_override_errors_name_the_key() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(overrides={"circuit.threshold": "x", "db": 5}, env={})
    assert problems(caught) == [
        "override db: Input should be a valid string",
        "override circuit.threshold: Input should be a valid integer, unable to parse string "
        "as an integer",
    ]


def test_problems_of_every_layer_are_reported_together(in_tmp: Path) -> None:
    write(in_tmp / "ledgerflow.toml", "port = -1\n")
    with pytest.raises(SettingsError) as caught:
        load_settings(overrides={"timer_interval_seconds": 0}, env={"LEDGERFLOW_PORT": "x"})
    assert [p.split(":")[0] for p in problems(caught)] == [
        "ledgerflow.toml",
        "LEDGERFLOW_PORT",
        "override timer_interval_seconds",
    ]


# --- unsafe binds -----------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "localhost", "::1", "[::1]"])
def test_loopback_without_auth_is_allowed(host: str) -> None:
    assert is_loopback(host)
    load_settings(overrides={"host": host, "auth_required": False}, env={}).refuse_unsafe_bind()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "ledger.example.org"])
def test_public_bind_without_auth_is_refused(host: str) -> None:
    assert not is_loopback(host)
    settings = load_settings(overrides={"host": host, "transport": "http"}, env={})
    settings.refuse_unsafe_bind()  # auth is on by default for http
    unsafe = load_settings(
        overrides={"host": host, "transport": "http", "auth_required": False}, env={}
    )
    with pytest.raises(SettingsError, match=f"refusing to listen on {host}:8765 without auth"):
        unsafe.refuse_unsafe_bind()


def test_settings_are_immutable() -> None:
    settings = load_settings(env={})
    with pytest.raises(ValueError, match="frozen"):
        settings.port = 1  # type: ignore[misc]
    assert isinstance(settings, Settings)
