"""The demo store's shoppers: a few opted in, more who did not, walking through three zones.

Builds, before the daemon starts, everything the demo's shoppers need: the
config sections (the Pi's radio replaying a file, three OpenMQTTGateway
satellites, the reference beacons of ``firmware_configs/beacons/``), the
replay file of what the Pi's radio will hear, and the satellite reports a
thread publishes to the store broker at their moments. Then it pushes the
opted-in shoppers' profiles to HQ's broker the way a pilot does
(``store-gateway hq push-profiles``), and in the end scores what HQ received
against the walks' ground truth.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway.hq import tools
from gateway.publish import topics
from gateway.testing import shoppers as sim
from gateway.testing.walks import DEMO_STORE, Walk

COMPANY_ID = 0xFFFF  # the development company id (docs/contracts.md section 2)
# Walks of the seeded simulator that take under 2.5 minutes (gateway/testing/walks.py),
# so that the demo ends in about three.
OPTED_IN_SEEDS = (52, 3, 15, 29)
FOREIGN_SEEDS = (49, 41, 9, 17, 34, 35, 38, 19)
# Seconds after the gateway starts: beacons are heard from the start, so every
# scanner has its calibration (10 readings) before the first shopper walks in.
FIRST_SHOPPER_AT_S = 15.0
SHOPPER_GAP_S = 6.0
FIRST_FOREIGN_AT_S = 8.0
FOREIGN_GAP_S = 4.0
# The demo's shoppers leave after 15 s of silence rather than a minute, to end sooner.
LEFT_AFTER_S = 15.0


def _uuid_text(raw: bytes) -> str:
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class DemoShoppers:
    """The shoppers of one demo run, from its start time."""

    def __init__(self, start_at: float, workdir: Path) -> None:
        rng = random.Random(20261201)
        self.start_at = start_at
        self.replay_file = workdir / "pi-radio.jsonl"
        self.opted_in = [
            sim.SimShopper(f"shopper-{seed}", rng.randbytes(32), seed) for seed in OPTED_IN_SEEDS
        ]
        self.walks: dict[str, Walk] = {}
        # When each opted-in shopper reaches the checkout zone (unix time): the till
        # serves them from there (gateway/demo/pos.py).
        self.checkouts: list[tuple[str, float]] = []
        self.foreign_devices = len(FOREIGN_SEEDS)
        # (unix time, scanner, manufacturer data, service data, rssi, device address)
        streams: list[list[tuple[float, str, dict[int, bytes], dict[str, bytes], float, str]]] = []
        exits = []
        for i, shopper in enumerate(self.opted_in):
            enter_at = start_at + FIRST_SHOPPER_AT_S + i * SHOPPER_GAP_S
            walk, adverts = sim.shopper_adverts(
                shopper,
                enter_at,
                COMPANY_ID,
                beacons=(i == 0),  # one set of reference beacons for the whole store
            )
            self.walks[shopper.shopper] = walk
            at_till = [iv.start_s for iv in walk.truth if iv.zone == "checkout"]
            if at_till:
                self.checkouts.append(
                    (shopper.shopper, enter_at + at_till[-1] - walk.entered_s + 2.0)
                )
            exits.append(enter_at + walk.duration_s)
            streams.append([(*a, self._address(rng)) for a in adverts])
        for j, seed in enumerate(FOREIGN_SEEDS):
            address = self._address(rng)
            adverts = sim.foreign_adverts(
                seed, start_at + FIRST_FOREIGN_AT_S + j * FOREIGN_GAP_S, COMPANY_ID
            )
            streams.append([(*a, address) for a in adverts])
        heard = sorted((a for s in streams for a in s), key=lambda a: a[0])
        # What nobody could hear yet (beacons' warm-up before the gateway started) is left out.
        heard = [a for a in heard if a[0] >= start_at + 1.0]
        self.radio = [a for a in heard if a[1] == "pi"]
        self.satellite = [a for a in heard if a[1] != "pi"]
        # The last shopper out, their "left" after LEFT_AFTER_S, and a tick to spare.
        self.ends_at = max(exits) + LEFT_AFTER_S + 3.0
        with open(self.replay_file, "w", encoding="utf-8") as f:
            for at, _scanner, md, sd, rssi, address in self.radio:
                f.write(
                    json.dumps(
                        {
                            "at": at,
                            "address": address,
                            "rssi": round(rssi),
                            "md": {str(k): v.hex() for k, v in md.items()},
                            "sd": {k: v.hex() for k, v in sd.items()},
                        }
                    )
                    + "\n"
                )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.published = 0

    @staticmethod
    def _address(rng: random.Random) -> str:
        # A random (resolvable private) address, as phones use.
        return ":".join(f"{b:02X}" for b in bytes([rng.randrange(0x40, 0x80)]) + rng.randbytes(5))

    def config_sections(self) -> dict[str, Any]:
        refs = sim.reference_ibeacons()
        return {
            "ble": {
                "enabled": True,
                "company_id": COMPANY_ID,
                "zone": "entrance",
                "backend": "replay",
                "replay_file": str(self.replay_file),
            },
            "satellites": [
                {"id": s.scanner_id, "firmware": "openmqttgateway", "zone": s.zone}
                for s in DEMO_STORE.scanners
                if s.scanner_id != "pi"
            ],
            "reference_beacons": [
                {
                    "id": b.beacon.beacon_id,
                    "uuid": _uuid_text(refs[b.beacon.beacon_id][0]),
                    "major": refs[b.beacon.beacon_id][1],
                    "minor": refs[b.beacon.beacon_id][2],
                    "scanner": b.beacon.scanner,
                    "expected_rssi_dbm": b.beacon.expected_rssi_dbm,
                }
                for b in DEMO_STORE.beacons
            ],
            "presence": {"left_after_s": LEFT_AFTER_S},
        }

    def push_profiles(
        self,
        hq_port: int,
        store_id: str,
        loyalty: dict[str, list[str]] | None = None,
        salt: bytes | None = None,
        features: dict[str, dict[str, Any]] | None = None,
    ) -> int:
        """Publish the opted-in shoppers to HQ's broker, as ``hq push-profiles`` would
        (``loyalty``: shopper -> loyalty numbers, hashed here with ``salt``;
        ``features``: shopper -> the ranker's features, in the profile's attributes)."""
        loyalty = loyalty or {}
        features = features or {}
        doc = {
            "shoppers": [
                {
                    "shopper": s.shopper,
                    "root_key": s.root_key.hex(),
                    "consent": {"scopes": ["presence", "analytics", "associate_assist", "screens"]},
                    **({"loyalty_ids": loyalty[s.shopper]} if s.shopper in loyalty else {}),
                    **(
                        {"attributes": {"features": features[s.shopper]}}
                        if s.shopper in features
                        else {}
                    ),
                }
                for s in self.opted_in
            ]
        }
        messages = tools.profiles_messages(doc, dt.datetime.now(dt.UTC), salt)
        pub = tools.Publisher("127.0.0.1", hq_port)
        try:
            return pub.publish_all(topics.hq_down(store_id, "profiles"), messages, 10)
        finally:
            pub.close()

    def start_satellites(self, store_port: int) -> None:
        """Publish the satellites' reports at their moments, from a thread."""
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id="demo-satellites",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        client.connect("127.0.0.1", store_port)
        client.loop_start()

        def play() -> None:
            try:
                for at, scanner, md, sd, rssi, address in self.satellite:
                    delay = at - time.time()
                    if delay > 0 and self._stop.wait(delay):
                        return
                    doc: dict[str, Any] = {"id": address, "rssi": round(rssi)}
                    for cid, payload in md.items():
                        doc["manufacturerdata"] = (cid.to_bytes(2, "little") + payload).hex()
                    for _uuid, data in sd.items():
                        doc["servicedata"] = data.hex()
                        doc["servicedatauuid"] = "0xfeaa"
                    topic = f"home/{scanner}/BTtoMQTT/{address.replace(':', '')}"
                    client.publish(topic, json.dumps(doc), qos=0)
                    self.published += 1
            finally:
                client.disconnect()
                client.loop_stop()

        self._thread = threading.Thread(target=play, name="demo-satellites", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def score(self, presence: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """What HQ learnt against the truth: who was detected, whose zone path was right."""
        by_shopper: dict[str, list[tuple[float, str, str]]] = {}
        for event_id, data in presence.items():
            seq = int(event_id.rsplit(":", 1)[-1]) if ":" in event_id else 0
            by_shopper.setdefault(str(data.get("shopper")), []).append(
                (seq, str(data.get("event")), str(data.get("zone")))
            )
        detected = 0
        right = 0
        for shopper, walk in self.walks.items():
            events = sorted(by_shopper.get(shopper, []))
            if any(kind == "arrived" for _, kind, _ in events):
                detected += 1
            path = tuple(zone for _, kind, zone in events if kind in ("arrived", "zone_changed"))
            right += path == walk.zones
        return {
            "shoppers_opted_in": len(self.walks),
            "shoppers_detected": detected,
            "zone_paths_right": right,
            "foreign_devices": len(FOREIGN_SEEDS),
        }
