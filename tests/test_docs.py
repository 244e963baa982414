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
        nested = [a for a in (field.annotation, *typing.get_args(field.annotation))
                  if isinstance(a, type) and issubclass(a, BaseModel)]
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
