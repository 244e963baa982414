"""Shopper features as a store receives them, and the ranker's input tensors built from them.

HQ computes each shopper's ``ShopperFeatures`` (hq/features.py) and
sends them inside a profile's ``attributes["features"]``; here
``features_from_attributes`` reads that JSON form back, never raising on
hostile input. ``batch_feed`` (and ``request_feed`` for one request, which
``bench/ranker_quality.py`` uses) turn features plus the live basket and
context into the ONNX graph's input tensors (docs/contracts.md section 5).
HQ's trainer and ``model recommend`` build their feeds with exactly these
functions, so a backtest measures what a store runs.

numpy and the standard library only: the Pi must never need more.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# The version of the attributes' JSON form (HQ writes it: hq/features.py).
ATTRIBUTES_VERSION = 1
# A profile's attributes are capped at 8 KiB (publish/downlink.py); features must
# leave room for other attributes: ids of up to 13 digits and 4-digit weights at
# the default lengths stay under ~5 KiB.
MAX_ATTRIBUTE_ITEMS = 256
MAX_ATTRIBUTE_ID_CHARS = 64


@dataclass(frozen=True)
class ShopperFeatures:
    """A shopper's sparse personal (``hist``) and neighbour-smoothed (``nbr``) preferences.

    Each is ``((item_id, weight), ...)``, best first. Item ids are catalogue ids
    as strings; ids the running model does not know are ignored when fed.
    """

    hist: tuple[tuple[str, float], ...]
    nbr: tuple[tuple[str, float], ...]


# -- attributes: the JSON form of features inside a profile ------------------------------


def _pairs(ids: Any, weights: Any) -> tuple[tuple[str, float], ...] | None:
    if not isinstance(ids, list) or not isinstance(weights, list) or len(ids) != len(weights):
        return None
    if len(ids) > MAX_ATTRIBUTE_ITEMS:
        return None
    out = []
    seen: set[str] = set()
    for item, w in zip(ids, weights, strict=True):
        if not isinstance(item, str) or not 0 < len(item) <= MAX_ATTRIBUTE_ID_CHARS:
            return None
        if isinstance(w, bool) or not isinstance(w, int | float):
            return None
        w = float(w)
        if not math.isfinite(w) or abs(w) > 1e6:
            return None
        if item in seen:
            continue
        seen.add(item)
        out.append((item, w))
    return tuple(out)


def features_from_attributes(doc: Any) -> ShopperFeatures | None:
    """Features from ``attributes["features"]``; None for anything malformed (never raises)."""
    try:
        if not isinstance(doc, dict) or doc.get("v") != ATTRIBUTES_VERSION:
            return None
        hist = _pairs(doc.get("h"), doc.get("hw"))
        nbr = _pairs(doc.get("n"), doc.get("nw"))
    except (TypeError, ValueError, RecursionError, OverflowError):
        return None
    if hist is None or nbr is None:
        return None
    return ShopperFeatures(hist=hist, nbr=nbr)


# -- feeding the graph -------------------------------------------------------------------


@dataclass(frozen=True)
class FeedRequest:
    """One scoring request, as ``batch_feed`` takes it."""

    features: ShopperFeatures | None
    basket: Sequence[str]
    hour: int
    dow: int
    zone: str | None = None


class FeedSchema:
    """What ``request_feed`` needs from a manifest, indexed once (catalogue -> index)."""

    def __init__(self, manifest: Mapping[str, Any]) -> None:
        schema = manifest["feature_schema"]
        self.catalogue: list[str] = [str(i) for i in manifest["catalogue"]]
        self.index: dict[str, int] = {item: i for i, item in enumerate(self.catalogue)}
        self.pad = len(self.catalogue)
        self.zones: dict[str, int] = {
            str(z): i + 1 for i, z in enumerate(manifest.get("zones", []))
        }
        self.hist_len = int(schema["hist_len"])
        self.nbr_len = int(schema["nbr_len"])
        self.basket_len = int(schema["basket_len"])
        if min(self.hist_len, self.nbr_len, self.basket_len) < 1:
            raise ValueError("feature_schema lengths must be at least 1")


_SCHEMA_CACHE: dict[tuple[Any, ...], FeedSchema] = {}
_SCHEMA_CACHE_SIZE = 4


def feed_schema(manifest: Mapping[str, Any]) -> FeedSchema:
    """The (cached) ``FeedSchema`` of ``manifest``: indexing 50,000 ids per request costs ms."""
    cat = manifest["catalogue"]
    key = (
        manifest.get("sha256"),
        manifest.get("version"),
        len(cat),
        cat[0] if cat else None,
        cat[-1] if cat else None,
        id(cat),
    )
    schema = _SCHEMA_CACHE.get(key)
    if schema is None:
        schema = FeedSchema(manifest)
        if len(_SCHEMA_CACHE) >= _SCHEMA_CACHE_SIZE:
            _SCHEMA_CACHE.pop(next(iter(_SCHEMA_CACHE)))
        _SCHEMA_CACHE[key] = schema
    return schema


def _fill_sparse(
    schema: FeedSchema,
    pairs: Sequence[tuple[str, float]],
    items_row: np.ndarray,
    weights_row: np.ndarray,
) -> None:
    n = 0
    seen: set[int] = set()
    limit = items_row.shape[0]
    for item, w in pairs:
        if n >= limit:
            break
        i = schema.index.get(item)
        if i is None or i in seen or not math.isfinite(w):
            continue
        seen.add(i)
        items_row[n] = i
        weights_row[n] = w
        n += 1


def _fill_row(schema: FeedSchema, req: FeedRequest, out: dict[str, np.ndarray], row: int) -> None:
    if not (isinstance(req.hour, int) and 0 <= req.hour <= 23):
        raise ValueError(f"hour must be 0..23, got {req.hour!r}")
    if not (isinstance(req.dow, int) and 0 <= req.dow <= 6):
        raise ValueError(f"dow must be 0..6, got {req.dow!r}")
    if req.features is not None:
        _fill_sparse(schema, req.features.hist, out["hist_items"][row], out["hist_weights"][row])
        _fill_sparse(schema, req.features.nbr, out["nbr_items"][row], out["nbr_weights"][row])
    # The newest basket_len distinct known items: the graph masks exactly these.
    known: list[int] = []
    seen: set[int] = set()
    for item in reversed(list(req.basket)):
        i = schema.index.get(item)
        if i is not None and i not in seen:
            seen.add(i)
            known.append(i)
            if len(known) >= schema.basket_len:
                break
    out["basket_items"][row, : len(known)] = known
    zone = 0 if req.zone is None else schema.zones.get(req.zone, 0)
    out["context"][row] = (req.hour, req.dow, zone)


def batch_feed(
    manifest: Mapping[str, Any], requests: Sequence[FeedRequest]
) -> dict[str, np.ndarray]:
    """The graph's inputs for many requests at once (batch dimension = ``len(requests)``)."""
    schema = feed_schema(manifest)
    b = len(requests)
    out: dict[str, np.ndarray] = {
        "hist_items": np.full((b, schema.hist_len), schema.pad, dtype=np.int64),
        "hist_weights": np.zeros((b, schema.hist_len), dtype=np.float32),
        "nbr_items": np.full((b, schema.nbr_len), schema.pad, dtype=np.int64),
        "nbr_weights": np.zeros((b, schema.nbr_len), dtype=np.float32),
        "basket_items": np.full((b, schema.basket_len), schema.pad, dtype=np.int64),
        "context": np.zeros((b, 3), dtype=np.int64),
    }
    for row, req in enumerate(requests):
        _fill_row(schema, req, out, row)
    return out


def request_feed(
    manifest: Mapping[str, Any],
    features: ShopperFeatures | None,
    basket: Sequence[str],
    hour: int,
    dow: int,
    zone: str | None,
) -> dict[str, np.ndarray]:
    """The graph's inputs for one request (b=1): unknown ids ignored, padded to the schema.

    The basket keeps its newest ``basket_len`` distinct known items (the graph
    never returns those); a caller with a longer basket filters the rest itself.
    Raises ValueError for an hour outside 0..23 or a dow outside 0..6.
    """
    return batch_feed(manifest, [FeedRequest(features, basket, hour, dow, zone)])
