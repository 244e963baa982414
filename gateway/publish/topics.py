"""MQTT topic names of docs/contracts.md section 3 (pure, no I/O)."""

from __future__ import annotations

STORE_STATUS = "store/v1/gateway/status"
STORE_HEALTH = "store/v1/gateway/health"


def hq_up(store: str, kind: str) -> str:
    """Store -> HQ event topic for ``kind``."""
    return f"retail/v1/stores/{store}/up/{kind}"


def hq_status(store: str) -> str:
    """The store's retained online/offline status at HQ."""
    return f"retail/v1/stores/{store}/status"


def hq_down(store: str, kind: str = "+") -> str:
    """HQ -> this store (``+`` for every kind)."""
    return f"retail/v1/stores/{store}/down/{kind}"


def fleet_down(kind: str = "+") -> str:
    """HQ -> every store (``+`` for every kind)."""
    return f"retail/v1/fleet/down/{kind}"


FLEET_DOWN_ALL = fleet_down("+")
ESPRESENSE_DEVICES = "espresense/devices/+/+"
OMG_BT = "home/+/BTtoMQTT/+"


def zone_screen(zone: str) -> str:
    """Retained content for a zone's public screen (never who is present)."""
    return f"store/v1/zones/{zone}/screen"


ASSOCIATE_ALERTS = "store/v1/associates/alerts"


def lane_display(lane: str) -> str:
    """A checkout lane's customer display (never who is at the till)."""
    return f"store/v1/lanes/{lane}/display"
