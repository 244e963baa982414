"""The operator docs keep up with the code."""

from __future__ import annotations

import typing
from pathlib import Path

from pydantic import BaseModel

from gateway.config import GatewayConfig

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for name, field in model.model_fields.items():
        nested = [
            a
            for a in (field.annotation, *typing.get_args(field.annotation))
            if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        if nested:
            keys.extend(_keys(nested[0], f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def test_every_config_key_is_documented() -> None:
    """Each dotted config key appears in backticks in docs/configuration.md."""
    text = (DOCS / "configuration.md").read_text()
    keys = _keys(GatewayConfig)
    assert len(keys) > 30
    missing = [k for k in keys if f"`{k}`" not in text]
    assert missing == []


def test_asyncapi_names_every_topic_the_gateway_publishes() -> None:
    """docs/asyncapi.json parses and has a channel for each topic in gateway.publish.topics."""
    import json

    from gateway.publish import topics

    doc = json.loads((DOCS / "asyncapi.json").read_text())
    assert doc["asyncapi"].startswith("2.")
    channels = set(doc["channels"])
    wanted = {
        topics.STORE_STATUS,
        topics.STORE_HEALTH,
        topics.hq_up("{store}", "{kind}"),
        topics.hq_status("{store}"),
    }
    assert wanted <= channels


def test_every_health_field_is_documented(tmp_path: Path) -> None:
    """Each field of a real health document appears in docs/mqtt-api.md."""
    from gateway.app import Gateway
    from gateway.config import parse_config

    cfg = parse_config(
        {
            "store": {"id": "s1"},
            "storage": {"path": str(tmp_path / "g.db")},
            "hq": {"host": "127.0.0.1", "port": 1},
            "simulation": {"events_per_s": 1},
            "ble": {"enabled": True},
            "satellites": [{"id": "sat-1", "firmware": "openmqttgateway", "zone": "produce"}],
            "lanes": [
                {
                    "id": "lane-1",
                    "port": str(tmp_path / "ttyPOS"),
                    "dialect": str(DOCS.parent / "firmware_configs" / "pos" / "journal-dvr.toml"),
                }
            ],
        }
    )
    health = Gateway(cfg).health()
    text = (DOCS / "mqtt-api.md").read_text()
    fields = []
    for key, value in health.items():
        if isinstance(value, dict) and key != "simulation":
            fields.extend(f"{key}.{sub}" for sub in value)
        else:
            fields.append(key)
    missing = [
        f
        for f in fields
        if f"`{f}`" not in text and f"`{f.split('.')[-1]}`" not in text and f"`{f}" not in text
    ]
    assert missing == []


def test_asyncapi_downlink_schemas_match_the_code() -> None:
    """The downlink payload schemas in docs/asyncapi.json are the ones the gateway enforces."""
    import json

    from gateway.publish.downlink import SCHEMAS

    doc = json.loads((DOCS / "asyncapi.json").read_text())
    for kind, model in SCHEMAS.items():
        for topic in (f"retail/v1/stores/{{store}}/down/{kind}", f"retail/v1/fleet/down/{kind}"):
            payload = doc["channels"][topic]["publish"]["message"]["payload"]
            assert payload == json.loads(json.dumps(model.model_json_schema())), topic


def test_asyncapi_details_every_event_kind_the_gateway_sends_up() -> None:
    """Each kind the code sends HQ (``UpEvent.of("kind", ...)``) has its own payload schema
    in docs/asyncapi.json; the daemon-level tests validate real events against them."""
    import re

    from gateway.testing.asyncapi import up_schemas

    package = Path(__file__).resolve().parent.parent / "gateway"
    sent = {
        m.group(1)
        for f in package.rglob("*.py")
        if f.parent.name != "testing" and f.name != "simulated.py"
        for m in re.finditer(r'UpEvent\.of\(\s*"([a-z_]+)"', f.read_text(encoding="utf-8"))
    }
    assert {"transaction", "decision", "presence"} <= sent
    assert sorted(sent - set(up_schemas())) == []


def test_the_asyncapi_check_refuses_undocumented_fields_and_wrong_types() -> None:
    """The check the daemon-level tests run is not vacuous: an extra field, a wrong type
    and a kind sent on another kind's topic each fail it; the documented event passes."""
    import pytest

    from gateway.testing.asyncapi import check_up_events

    topic = "retail/v1/stores/s1/up/conversion"
    data = {
        "visit": "v",
        "experiment": "e",
        "arm": "a",
        "item": "4011",
        "shown": True,
        "recommended_ts": 1.0,
        "lane": "lane-1",
        "transaction": None,
    }
    env = {"v": 1, "id": "s1:1", "store": "s1", "kind": "conversion", "ts": 2.0, "data": data}
    assert check_up_events([(topic, env)])["conversion"] == 1
    for bad_data, topic_ in (
        ({**data, "shopper": "s-7"}, topic),
        ({**data, "shown": "yes"}, topic),
        (data, "retail/v1/stores/s1/up/decision"),
    ):
        with pytest.raises(AssertionError):
            check_up_events([(topic_, {**env, "data": bad_data})])


def test_every_contract_the_code_cites_is_in_the_projects_own_docs() -> None:
    """Each 'docs/contracts.md section N' in the tree names a section that exists there,
    and nothing cites a contracts file outside the project."""
    import re

    root = DOCS.parent
    sections = set(re.findall(r"^## (\d+)\. ", (DOCS / "contracts.md").read_text(), re.M))
    assert sections >= {"1", "2", "3", "4", "5"}
    cited: set[str] = set()
    outside: list[str] = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if not path.is_file() or rel.parts[0] in {".git", ".venv"} or "egg-info" in str(rel):
            continue
        if path.suffix not in {".py", ".md", ".toml", ".json", ".sh", ".service"}:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for m in re.finditer(r"docs/contracts\.md sections? (\d+)(?: and (\d+))?", text):
            cited.update(n for n in m.groups() if n)
        own = rel == Path("docs/contracts.md") or path == Path(__file__)
        if not own and re.search(r"\bCONTRACTS[ .]", text):
            outside.append(str(rel))
    assert outside == []
    assert len(cited) >= 4
    assert cited <= sections
