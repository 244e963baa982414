"""What the decision stage says: its records, turned into payloads only by
``gateway/publish/payloads.py``.

Pure types (no onnxruntime here), so the wire format can be built and checked
without loading the ranker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.decision.experiments import Conversion

# The three triggers; each has one output device and one consent scope
# (gateway/decision/rules.py).
ARRIVAL, DWELL, BASKET = "arrival", "dwell", "basket"


@dataclass(frozen=True, slots=True)
class Decision:
    """One trigger decided, shown or not (a holdout's record is never shown).

    ``shopper`` and ``visit`` are None for a public screen's decision: its record
    names nobody, as the screen does not.
    """

    decision: str  # a random id, shared by the record, its impression and the device
    trigger: str
    shopper: str | None
    visit: str | None
    zone: str | None
    lane: str | None
    experiment: str | None
    arm: str | None
    shown: bool
    items: tuple[str, ...]
    reasons: Mapping[str, tuple[str, ...]]
    dropped: Mapping[str, int]
    source: str  # "model" or "fallback"
    fallback_reason: str | None
    model_version: int | None
    latency_ms: float
    ts: float


@dataclass(frozen=True, slots=True)
class Shown:
    """A decision's items on the device its trigger is for (``StoreDisplay.show``):
    the associates (arrival), a zone's public screen (dwell), a lane's display (basket).
    ``shopper`` and ``visit`` are set for the associates only."""

    trigger: str
    decision: str
    items: tuple[str, ...]
    ts: float
    zone: str | None = None
    lane: str | None = None
    shopper: str | None = None
    visit: str | None = None
    basket_items: int = 0


@dataclass(frozen=True, slots=True)
class Impression:
    """A decision's items were put on a device; ``shopper`` is the subject (erasure) only."""

    decision: str
    output: str
    zone: str | None
    lane: str | None
    items: tuple[str, ...]
    source: str
    shopper: str | None
    ts: float


@dataclass(frozen=True, slots=True)
class Converted:
    """A recommended item bought in the same visit, at a lane."""

    conversion: Conversion
    lane: str | None
    transaction: str | None
    ts: float


@dataclass(frozen=True, slots=True)
class Summary:
    """One experiment's per-arm counts over one period (``experiments.HourlySummary``)."""

    row: Mapping[str, Any] = field(default_factory=dict)
    ts: float = 0.0
