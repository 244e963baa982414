"""Checks events against docs/asyncapi.json: what HQ developers build against is what
the gateway sends. Tests only (needs the ``dev`` extra's jsonschema)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ASYNCAPI = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.json"
UP_CHANNEL = "retail/v1/stores/{store}/up/{kind}"


def up_schemas(path: Path = ASYNCAPI) -> dict[str, dict[str, Any]]:
    """The up channel's message payload schemas by name (``event`` is the envelope)."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    messages = doc["channels"][UP_CHANNEL]["subscribe"]["message"]["oneOf"]
    return {m["name"]: m["payload"] for m in messages}


def _closed_data(schema: Any, inside_data: bool = False) -> Any:
    """A copy in which every object under ``data`` allows only its listed properties.

    The file leaves objects open (a later version adds fields without breaking readers
    of version 1); the check closes them, so a field the code sends and the file does
    not describe fails the test.
    """
    if isinstance(schema, list):
        return [_closed_data(s, inside_data) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "properties" and isinstance(value, dict):
            out[key] = {
                name: _closed_data(sub, inside_data or name == "data")
                for name, sub in value.items()
            }
        else:
            out[key] = _closed_data(value, inside_data)
    if inside_data and "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def check_up_events(envelopes: Iterable[tuple[str, dict[str, Any]]]) -> Counter[str]:
    """Validate each (topic, envelope) HQ received against its kind's schema, closed
    (the envelope's alone for a kind the file does not detail). Returns how many of each
    detailed kind were checked; raises AssertionError naming the first misfit."""
    import jsonschema

    schemas = {k: _closed_data(s) for k, s in up_schemas().items()}
    validators = {k: jsonschema.Draft202012Validator(s) for k, s in schemas.items()}
    checked: Counter[str] = Counter()
    for topic, env in envelopes:
        if topic.endswith("/status"):
            continue
        kind = env.get("kind")
        if not topic.endswith(f"/up/{kind}"):
            raise AssertionError(f"{topic}: envelope kind {kind!r} is not the topic's")
        name = kind if kind in validators else "event"
        errors = sorted(validators[name].iter_errors(env), key=lambda e: list(e.path))
        if errors:
            e = errors[0]
            where = "/".join(str(p) for p in e.path)
            raise AssertionError(f"{kind} event {env.get('id')}: {where}: {e.message}")
        if name != "event":
            checked[name] += 1
    return checked
