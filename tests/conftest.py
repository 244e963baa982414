"""Shared fixtures: real Mosquitto brokers on free loopback ports, real SQLite files.

The tests mirror the package: ``tests/<stage>/`` holds each stage's unit tests,
``tests/daemon/`` the daemon-level scenarios (the whole gateway as a process or
a composed ``Gateway``, real brokers, real ptys), marked ``daemon`` here so that
``pytest -m "not daemon"`` is the fast set a developer runs while working.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.log import configure_logging
from gateway.testing.hq import HqReceiver
from gateway.testing.mosquitto import MosquittoBroker


@pytest.fixture(autouse=True, scope="session")
def _json_logs() -> None:
    configure_logging("debug", "json")


@pytest.fixture
def store_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """The store's Mosquitto (private, loopback, persistence on)."""
    broker = MosquittoBroker(tmp_path / "store-broker", name="store").start()
    yield broker
    broker.close()


@pytest.fixture
def hq_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """HQ's broker (private, loopback, persistence on so sessions survive restarts)."""
    broker = MosquittoBroker(tmp_path / "hq-broker", name="hq").start()
    yield broker
    broker.close()


@pytest.fixture
def hq_receiver(hq_broker: MosquittoBroker) -> Iterator[HqReceiver]:
    """A persistent-session HQ consumer recording every event id."""
    rx = HqReceiver(hq_broker.port).start()
    yield rx
    rx.stop()


DAEMON_DIR = Path(__file__).resolve().parent / "daemon"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/daemon/ as ``daemon``."""
    for item in items:
        if DAEMON_DIR in Path(item.path).parents:
            item.add_marker(pytest.mark.daemon)
