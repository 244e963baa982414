"""The demo store's decisions: what the shoppers' profiles carry, the experiment, and a
view of what the store's screens, tablets and lane displays are told.

Each opted-in demo shopper gets ranker features HQ would have computed from their
purchase history; here the "history" is made up: a few items drawn (seeded, per
shopper) from the shipped bundle's own popular list, so that the model has
something personal to rank with. An experiment splits shoppers between the
model and the popularity fallback with a holdout; its salt is chosen so that
the shopper who scans a loyalty card at the till is in the model's arm, which
lets the demo show a whole loop: the associates' tablet suggests an item on
arrival, the shopper buys it, HQ receives the conversion with its arm.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway.decision import experiments as ex
from gateway.decision.features import ShopperFeatures
from gateway.decision.flow import default_bundle_dir
from gateway.hq.features import features_to_attributes
from gateway.publish import topics

EXPERIMENT_ID = "demo-nba"
HOLDOUT = 0.2


def demo_features(shoppers: list[str], bundle_dir: Path | None = None) -> dict[str, Any]:
    """Shopper -> ``attributes["features"]``: a made-up history of the bundle's popular items."""
    try:
        manifest = json.loads(((bundle_dir or default_bundle_dir()) / "manifest.json").read_text())
        popular = [str(i) for i in manifest.get("popular", {}).get("overall", [])][:60]
    except (OSError, ValueError, AttributeError):
        return {}
    if len(popular) < 8:
        return {}
    out = {}
    for shopper in shoppers:
        rng = random.Random(shopper)
        picked = rng.sample(popular, 8)
        hist = tuple((item, round(1.0 / (rank + 1), 4)) for rank, item in enumerate(picked))
        out[shopper] = features_to_attributes(ShopperFeatures(hist=hist, nbr=()))
    return out


def experiment_for(shopper: str | None) -> dict[str, Any]:
    """The demo's experiment, with a salt that puts ``shopper`` in the model's arm."""
    arms = (ex.Arm("model", 1.0, "model"), ex.Arm("popular", 1.0, "popular"))
    salt = "demo-salt-0"
    for i in range(1000):
        salt = f"demo-salt-{i}"
        if (
            shopper is None
            or ex.assign(ex.Experiment(EXPERIMENT_ID, salt, arms, HOLDOUT), shopper) == "model"
        ):
            break
    return {
        "id": EXPERIMENT_ID,
        "salt": salt,
        "holdout": HOLDOUT,
        "arms": [{"name": a.name, "weight": a.weight, "strategy": a.strategy} for a in arms],
    }


class StoreView:
    """What the store's outputs were told: associate alerts, zone screens, lane displays."""

    def __init__(self, port: int) -> None:
        self._lock = threading.Lock()
        self.alerts: list[dict[str, Any]] = []
        self.screens: dict[str, dict[str, Any]] = {}
        self.displays: list[dict[str, Any]] = []
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id="demo-store-view",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self._client.on_connect = lambda c, *a: c.subscribe(
            [
                (topics.ASSOCIATE_ALERTS, 1),
                ("store/v1/zones/+/screen", 1),
                ("store/v1/lanes/+/display", 1),
            ]
        )
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with contextlib.suppress(ValueError), self._lock:
            doc = json.loads(msg.payload)
            if msg.topic == topics.ASSOCIATE_ALERTS:
                self.alerts.append(doc)
            elif msg.topic.endswith("/screen"):
                self.screens[msg.topic.split("/")[3]] = doc
            elif msg.topic.endswith("/display"):
                self.displays.append(doc)

    def suggestion(self, shopper: str) -> str | None:
        """The first item the associates were last told to suggest to ``shopper``."""
        with self._lock:
            for alert in reversed(self.alerts):
                if alert.get("shopper") == shopper and alert.get("items"):
                    return str(alert["items"][0])
        return None

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {
                "alerts": len(self.alerts),
                "screens": len(self.screens),
                "displays": len(self.displays),
            }

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
