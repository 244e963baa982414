"""gateway.toml validation: the example file, unknown keys, secrets, file modes, and robustness."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import load_config, parse_config
from gateway.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "gateway" / "gateway.example.toml"


def make_raw(**sections: dict[str, Any]) -> dict[str, Any]:
    """A minimal valid raw config (as tomllib would return it), with sections overridden."""
    raw: dict[str, Any] = {"store": {"id": "store-0001"}}
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return raw


def make_secret_file(tmp_path: Path, mode: int = 0o600, name: str = "broker.password") -> Path:
    """A password file with the given mode."""
    path = tmp_path / name
    path.write_text("s3cret\n", encoding="utf-8")
    path.chmod(mode)
    return path


def problems_of(raw: dict[str, Any]) -> list[tuple[str, str]]:
    """The (dotted.path, message) problems parse_config reports for ``raw``."""
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    return info.value.problems


def test_example_config_validates() -> None:
    """The shipped gateway.example.toml is a valid configuration."""
    config = load_config(EXAMPLE)
    assert config.store.id == "store-0001"


def test_minimal_config_validates() -> None:
    """A config with only store.id is valid and every other section takes its defaults."""
    config = parse_config(make_raw())
    assert config.outbox.max_mb == 256
    assert config.hq.enabled is False


def test_unknown_key_is_an_error_naming_its_dotted_path() -> None:
    """A misspelt key is reported with its full dotted path, not silently ignored."""
    problems = problems_of(make_raw(outbox={"max_mbb": 10}))
    assert [path for path, _ in problems] == ["outbox.max_mbb"]
    assert "unknown key" in problems[0][1]


def test_unknown_nested_key_is_an_error_naming_its_dotted_path() -> None:
    """A misspelt key inside a sub-table is reported as section.table.key."""
    problems = problems_of(make_raw(hq={"tls": {"ca_fil": "/x"}}))
    assert [path for path, _ in problems] == ["hq.tls.ca_fil"]


def test_unknown_section_is_an_error() -> None:
    """A misspelt section name is reported as an unknown key."""
    problems = problems_of({**make_raw(), "outbx": {"max_mb": 1}})
    assert [path for path, _ in problems] == ["outbx"]


def test_missing_store_section_is_reported() -> None:
    """Without [store] the problem names `store` as a required key."""
    problems = problems_of({})
    assert problems == [("store", "required key is missing")]


def test_every_problem_is_reported_at_once() -> None:
    """Several mistakes give one problem each, not only the first."""
    problems = problems_of(
        make_raw(outbox={"max_mbb": 1}, store_broker={"port": 70000}, log={"level": "loud"})
    )
    assert sorted(path for path, _ in problems) == [
        "log.level",
        "outbox.max_mbb",
        "store_broker.port",
    ]


def test_password_in_the_toml_is_refused_with_a_clear_message() -> None:
    """hq.password = "x" is refused as a secret in the TOML, not as a mere unknown key."""
    problems = problems_of(make_raw(hq={"password": "x"}))
    assert len(problems) == 1
    path, message = problems[0]
    assert path == "hq.password"
    assert "secret" in message
    assert "_file" in message


def test_secret_in_a_nested_table_is_refused() -> None:
    """A private key pasted into [hq.tls] is refused as a secret too."""
    problems = problems_of(make_raw(hq={"tls": {"private_key": "-----BEGIN"}}))
    assert [path for path, _ in problems] == ["hq.tls.private_key"]
    assert "secret" in problems[0][1]


def test_password_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    """A password_file with mode 0644 is refused and the message says to chmod 600 it."""
    secret = make_secret_file(tmp_path, mode=0o644)
    problems = problems_of(make_raw(store_broker={"password_file": str(secret)}))
    assert len(problems) == 1
    path, message = problems[0]
    assert path == "store_broker.password_file"
    assert "644" in message
    assert "chmod 600" in message


def test_password_file_with_mode_0600_is_accepted(tmp_path: Path) -> None:
    """A password_file with mode 0600 is accepted."""
    secret = make_secret_file(tmp_path, mode=0o600)
    config = parse_config(make_raw(store_broker={"password_file": str(secret)}))
    assert config.store_broker.password_file == secret


def test_hq_password_file_is_checked_when_hq_is_enabled(tmp_path: Path) -> None:
    """The HQ password file is held to mode 0600 as soon as HQ is enabled."""
    secret = make_secret_file(tmp_path, mode=0o640)
    problems = problems_of(make_raw(hq={"enabled": True, "password_file": str(secret)}))
    assert [path for path, _ in problems] == ["hq.password_file"]


def test_missing_password_file_is_reported(tmp_path: Path) -> None:
    """A password_file that does not exist is a problem naming the key and the file."""
    missing = tmp_path / "nope.password"
    problems = problems_of(make_raw(store_broker={"password_file": str(missing)}))
    assert len(problems) == 1
    assert problems[0][0] == "store_broker.password_file"
    assert str(missing) in problems[0][1]


def test_password_file_with_nul_byte_is_a_config_error() -> None:
    """A password_file containing NUL (TOML allows "\\u0000") is a ConfigError, not a crash."""
    problems = problems_of(make_raw(store_broker={"password_file": "/etc/a\x00b"}))
    assert [path for path, _ in problems] == ["store_broker.password_file"]


def test_client_certificate_without_key_is_refused() -> None:
    """tls.cert_file without tls.key_file is refused (a client certificate needs both)."""
    problems = problems_of(make_raw(hq={"tls": {"cert_file": "/etc/store.crt"}}))
    assert [path for path, _ in problems] == ["hq.tls"]
    assert "key_file" in problems[0][1]


def test_reconnect_min_above_max_is_refused() -> None:
    """reconnect_min_s greater than reconnect_max_s is refused, naming both settings."""
    problems = problems_of(make_raw(store_broker={"reconnect_min_s": 10, "reconnect_max_s": 2}))
    assert len(problems) == 1
    path, message = problems[0]
    assert path.startswith("store_broker")
    assert "reconnect_min_s" in message
    assert "reconnect_max_s" in message


def test_out_of_range_value_is_refused() -> None:
    """A port above 65535 is refused with its dotted path."""
    problems = problems_of(make_raw(hq={"port": 70000}))
    assert [path for path, _ in problems] == ["hq.port"]


@pytest.mark.parametrize(("section", "key"), [("outbox", "max_mb"), ("storage", "max_size_mb")])
def test_infinite_sizes_are_refused(section: str, key: str) -> None:
    """TOML's `inf` is not a size: accepting it crashes the daemon later with OverflowError."""
    problems = problems_of(make_raw(**{section: {key: math.inf}}))
    assert [path for path, _ in problems] == [f"{section}.{key}"]


def test_boolean_for_a_number_is_refused() -> None:
    """`outbox.max_mb = true` is a type mistake, not a silent 1 MB budget."""
    problems = problems_of(make_raw(outbox={"max_mb": True}))
    assert [path for path, _ in problems] == ["outbox.max_mb"]


def test_config_object_is_frozen() -> None:
    """Assigning to a loaded config raises: it is loaded once and never changed."""
    config = parse_config(make_raw())
    with pytest.raises(pydantic.ValidationError):
        config.outbox.max_mb = 1  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        config.store = config.store  # type: ignore[misc]


def test_toml_syntax_error_is_one_problem_naming_the_file(tmp_path: Path) -> None:
    """A TOML syntax error is reported once, with the file's path and the word TOML."""
    path = tmp_path / "gateway.toml"
    path.write_text('[store]\nid = "s1\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert len(info.value.problems) == 1
    where, message = info.value.problems[0]
    assert where == str(path)
    assert "TOML" in message


def test_missing_config_file_is_one_problem_naming_the_file(tmp_path: Path) -> None:
    """A config file that does not exist is one problem naming the file."""
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert len(info.value.problems) == 1
    where, message = info.value.problems[0]
    assert where == str(path)
    assert "cannot read" in message


def test_non_utf8_config_file_is_one_problem(tmp_path: Path) -> None:
    """A config file that is not UTF-8 is one problem naming the file, not a traceback."""
    path = tmp_path / "gateway.toml"
    path.write_bytes(b'[store]\nid = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [where for where, _ in info.value.problems] == [str(path)]


# -- robustness ------------------------------------------------------------------

# Real key names mixed with arbitrary ones, so that generated documents reach the
# validators of real fields (a purely random key is always just "unknown").
REAL_KEYS = [
    "store", "id", "name", "storage", "path", "max_size_mb", "ballast_mb", "outbox",
    "max_mb", "max_age_h", "publish_window", "commit_batch", "loss_report_interval_s",
    "hq", "store_broker", "enabled", "host", "port", "client_id", "username",
    "password_file", "tls", "ca_file", "cert_file", "key_file", "keepalive_s",
    "reconnect_min_s", "reconnect_max_s", "session_expiry_s", "health_interval_s",
    "log", "level", "format", "daemon", "shutdown_timeout_s", "simulation",
    "events_per_s", "kinds", "max_events", "password", "key",
]  # fmt: skip
keys = st.one_of(st.sampled_from(REAL_KEYS), st.text(max_size=12))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    st.lists(st.text(max_size=8), max_size=3),
)
documents = st.recursive(
    scalars,
    lambda children: st.dictionaries(keys, children, max_size=5),
    max_leaves=25,
).filter(lambda doc: isinstance(doc, dict))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(raw=documents)
def test_parse_config_raises_only_config_error(raw: dict[str, Any]) -> None:
    """Any nested dict of scalars either validates or raises ConfigError, never anything else."""
    try:
        config = parse_config(raw)
    except ConfigError as exc:
        assert exc.problems
        assert all(isinstance(path, str) and path for path, _ in exc.problems)
    else:
        assert config.store.id


# -- decision and experiments: the one place their values are checked ---------------------
# The pure modules (gateway/decision/rules.py, experiments.py) take these values as given.


def make_experiment(**overrides: Any) -> dict[str, Any]:
    """An [[experiments]] table with arms "model" (weight 1) and "popular" (weight 2)."""
    doc: dict[str, Any] = {
        "id": "oat-milk-2026",
        "salt": "s3cret-salt",
        "holdout": 0.1,
        "arms": [
            {"name": "model", "weight": 1, "strategy": "model"},
            {"name": "popular", "weight": 2, "strategy": "popular"},
        ],
    }
    doc.update(overrides)
    return doc


def test_a_valid_experiment_is_accepted() -> None:
    """The builder's experiment parses, so each refusal below is down to its one bad value."""
    config = parse_config({**make_raw(), "experiments": [make_experiment()]})
    assert [a.name for a in config.experiments[0].arms] == ["model", "popular"]


@pytest.mark.parametrize(
    ("overrides", "path"),
    [
        ({"arms": [{"name": "a", "weight": 0}]}, "experiments.0.arms.0.weight"),
        ({"arms": [{"name": "a", "weight": -1}]}, "experiments.0.arms.0.weight"),
        ({"arms": [{"name": "a", "weight": math.nan}]}, "experiments.0.arms.0.weight"),
        ({"arms": [{"name": "a", "weight": math.inf}]}, "experiments.0.arms.0.weight"),
        ({"arms": [{"name": "a", "weight": True}]}, "experiments.0.arms.0.weight"),
        ({"arms": [{"name": ""}]}, "experiments.0.arms.0.name"),
        ({"arms": [{"name": "a", "strategy": ""}]}, "experiments.0.arms.0.strategy"),
        ({"holdout": 1.0}, "experiments.0.holdout"),
        ({"holdout": -0.1}, "experiments.0.holdout"),
        ({"arms": [{"name": "a"}, {"name": "a"}]}, "experiments.0"),
        ({"arms": [{"name": "holdout"}]}, "experiments.0"),
        ({"arms": []}, "experiments.0.arms"),
        ({"salt": ""}, "experiments.0.salt"),
        ({"id": "E X"}, "experiments.0.id"),
    ],
)
def test_bad_experiments_are_refused_with_their_dotted_path(
    overrides: dict[str, Any], path: str
) -> None:
    """Weights above 0 and finite, holdout in [0, 1), unique arm names, "holdout" reserved."""
    problems = problems_of({**make_raw(), "experiments": [make_experiment(**overrides)]})
    assert path in [p for p, _ in problems]


def test_duplicate_and_reserved_arm_names_say_why() -> None:
    """The two arm-name rules the models check as a whole name the rule broken."""
    dup = problems_of({**make_raw(), "experiments": [make_experiment(arms=[{"name": "a"}] * 2)]})
    assert "unique" in dict(dup)["experiments.0"]
    held = problems_of({**make_raw(), "experiments": [make_experiment(arms=[{"name": "holdout"}])]})
    assert "holdout's own arm" in dict(held)["experiments.0"]


@pytest.mark.parametrize(
    ("decision", "path"),
    [
        ({"item_cap_per_visit": 0}, "decision.item_cap_per_visit"),
        ({"item_cap_per_visit": True}, "decision.item_cap_per_visit"),
        ({"decisions_per_visit": 0}, "decision.decisions_per_visit"),
        ({"decisions_per_visit": 1.5}, "decision.decisions_per_visit"),
        ({"summary_interval_s": 0}, "decision.summary_interval_s"),
        ({"summary_interval_s": math.inf}, "decision.summary_interval_s"),
        ({"exclude_prefixes": [""]}, "decision.exclude_prefixes.0"),
        ({"exclude_items": [""]}, "decision.exclude_items.0"),
        ({"exclude_prefixes": "ALC-"}, "decision.exclude_prefixes"),
    ],
)
def test_bad_caps_periods_and_exclusions_are_refused(decision: dict[str, Any], path: str) -> None:
    """Caps are integers of at least 1, the summary period finite and positive, exclusions a
    list of non-empty ids (an empty prefix would exclude every item and silence the store)."""
    assert [p for p, _ in problems_of(make_raw(decision=decision))] == [path]


@pytest.mark.parametrize(
    ("presence", "path"),
    [
        ({"visit_gap_s": math.nan}, "presence.visit_gap_s"),
        ({"visit_gap_s": 0}, "presence.visit_gap_s"),
        ({"left_after_s": -1.0}, "presence.left_after_s"),
        ({"dwelled_after_s": math.inf}, "presence.dwelled_after_s"),
        ({"margin_db": -3}, "presence.margin_db"),
        ({"min_dwell_s": "6"}, "presence.min_dwell_s"),
    ],
)
def test_bad_presence_tuning_is_refused_with_its_dotted_path(
    presence: dict[str, Any], path: str
) -> None:
    """The presence and visit tuning store IT may set is checked once, by the config: a
    gap or delay that is not a finite positive number (or a negative margin) is refused."""
    assert [p for p, _ in problems_of(make_raw(presence=presence))] == [path]
