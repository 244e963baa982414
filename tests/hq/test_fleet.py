"""HQ's fleet view (retained model states on a real broker) and the staged rollout's rules."""

from __future__ import annotations

import json
import time
from typing import Any

import paho.mqtt.client as paho
import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway.hq import fleet
from gateway.hq.fleet import FleetView, FleetWatcher, StoreRow, run_rollout
from gateway.publish.rollout import bucket, selected
from gateway.testing.mosquitto import MosquittoBroker

STORES = [f"store-{n:03d}" for n in range(40)]


def model_state(store: str, state: str, version: int, **data: Any) -> bytes:
    body = {"state": state, "version": version, **data}
    return json.dumps(
        {
            "v": 1,
            "id": f"{store}:1",
            "store": store,
            "kind": "model_state",
            "ts": 100.0,
            "data": body,
        }
    ).encode()


def test_bucket_is_deterministic_uniform_and_picks_by_share() -> None:
    """The same store always lands in the same place, and a share picks about that share."""
    many = [f"s{n}" for n in range(20_000)]
    assert [bucket(s) for s in many[:50]] == [bucket(s) for s in many[:50]]
    assert all(0 <= bucket(s) < 1 for s in many)
    picked = sum(selected(s, 0.05) for s in many)
    assert 800 < picked < 1200  # 5 % of 20,000 is 1,000; the hash is uniform
    # Stages nest: a store in the 5 % stage is in the 25 % stage too.
    assert all(selected(s, 0.25) for s in many if selected(s, 0.05))
    assert all(selected(s, 1.0) for s in many)


@given(st.text(min_size=1, max_size=64), st.floats(min_value=0.0, max_value=1.0))
def test_selected_agrees_with_the_bucket_for_any_store(store: str, share: float) -> None:
    assert selected(store, share) == (share >= 1.0 or bucket(store) < share)


def test_parse_stages_accepts_rising_percentages_ending_at_100() -> None:
    assert fleet.parse_stages("5,25,100") == [0.05, 0.25, 1.0]
    assert fleet.parse_stages("100") == [1.0]
    for bad in ("", "5,3,100", "5,25", "0,100", "x", "5,150"):
        with pytest.raises(ValueError, match="--stages"):
            fleet.parse_stages(bad)


def test_view_folds_states_and_counts_garbage() -> None:
    view = FleetView()
    view.feed("retail/v1/stores/A/up/model_state", model_state("A", "active", 5, active_version=5))
    view.feed(
        "retail/v1/stores/B/up/model_state",
        model_state(
            "B",
            "downloading",
            6,
            active_version=5,
            pending_version=6,
            progress={"received": 10, "total": 70},
        ),
    )
    view.feed("retail/v1/stores/B/status", b'{"v":1,"state":"online"}')
    view.feed("retail/v1/stores/C/up/model_state", b"\xff not json")
    view.feed("retail/v1/stores/C/up/model_state", model_state("C", "exploded", 1))
    view.feed("not/a/store/topic", b"{}")
    rows = view.rows()
    assert rows["A"].state == "active" and rows["A"].active_version == 5
    assert (rows["B"].received, rows["B"].total, rows["B"].online) == (10, 70, True)
    assert rows["C"].state is None
    assert view.bad_messages == 2
    text = fleet.render(rows, now=110.0)
    assert "10/70" in text.splitlines()[2]
    assert text.splitlines()[-1] == "3 stores: active 1, downloading 1, unknown 1"


def _row(
    store: str,
    state: str,
    version: int,
    active: int | None,
    left: float | None = None,
    reason: str | None = None,
) -> StoreRow:
    return StoreRow(
        store,
        active_version=active,
        state=state,
        version=version,
        probation_left_s=left,
        reason=reason,
    )


class FakeFleet:
    """40 store-side state machines in one process: each selected store downloads,
    shadows, then activates the version, a few polls after the stage reached it."""

    def __init__(self, stores: list[str], fail: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.stores = stores
        self.fail = fail
        self.share = 0.0
        self.reached_at: dict[str, int] = {}
        self.polls = 0
        self.published: list[tuple[float, list[str]]] = []

    def publish(self, share: float) -> None:
        # What reached the stores when the stage was published: nobody is active yet.
        active_now = sorted(s for s, row in self.rows().items() if row.state == "active")
        self.published.append((share, active_now))
        self.share = share
        for s in self.stores:
            if selected(s, share):
                self.reached_at.setdefault(s, self.polls)

    def rows(self) -> dict[str, StoreRow]:
        out = {}
        for s in self.stores:
            at = self.reached_at.get(s)
            age = -1 if at is None else self.polls - at
            if at is None:
                out[s] = _row(s, "active", 4, 4)
            elif s in self.fail and age >= 2:
                out[s] = _row(s, "rejected", 5, 4, reason="shadow p99 12.1x the active")
            elif age >= 4:
                out[s] = _row(s, "active", 5, 5, left=0.0)
            elif age >= 3:
                out[s] = _row(s, "active", 5, 5, left=30.0)  # promoted, still on probation
            elif age >= 1:
                out[s] = _row(s, "shadow", 5, 4)
            else:
                out[s] = _row(s, "downloading", 5, 4)
        return out

    def poll(self) -> dict[str, StoreRow]:
        self.polls += 1
        return self.rows()


def test_rollout_reaches_exactly_the_hashed_stores_and_waits_for_them() -> None:
    fake = FakeFleet(STORES)
    result = run_rollout(
        5,
        [0.05, 0.25, 1.0],
        lambda: STORES,
        fake.poll,
        fake.publish,
        stage_timeout_s=1e9,
        poll_s=0,
        sleep=lambda s: None,
    )
    assert result.outcome == "complete"
    first = result.stages[0]
    assert first.stores == sorted(s for s in STORES if bucket(s) < 0.05)
    assert first.stores  # the 40-store fleet has at least one 5 % canary
    # Stage 1 reached only its stores; stage 2 was published only after every stage-1
    # store reported version 5 active with its probation over.
    assert set(fake.reached_at) == set(STORES)
    _, active_at_stage2 = fake.published[1]
    assert set(first.stores) <= set(active_at_stage2)
    second = result.stages[1]
    assert set(second.stores) > set(first.stores)
    assert second.stores == sorted(s for s in STORES if bucket(s) < 0.25)
    assert result.stages[2].stores == STORES


def test_rollout_stops_when_a_canary_refuses_and_the_rest_never_get_it() -> None:
    canaries = [s for s in STORES if bucket(s) < 0.25]
    fake = FakeFleet(STORES, fail={canaries[0]})
    result = run_rollout(
        5,
        [0.25, 1.0],
        lambda: STORES,
        fake.poll,
        fake.publish,
        stage_timeout_s=1e9,
        poll_s=0,
        sleep=lambda s: None,
    )
    assert result.outcome == "aborted"
    assert list(result.stages[0].failed) == [canaries[0]]
    assert "p99" in result.stages[0].failed[canaries[0]]
    assert [share for share, _ in fake.published] == [0.25]
    assert set(fake.reached_at) == set(canaries)


def test_rollout_times_out_on_a_silent_stage() -> None:
    ticks = iter(range(10_000))
    result = run_rollout(
        5,
        [0.5, 1.0],
        lambda: STORES,
        lambda: {},
        lambda share: None,
        stage_timeout_s=5,
        poll_s=0,
        sleep=lambda s: None,
        clock=lambda: float(next(ticks)),
    )
    assert result.outcome == "timeout"
    assert result.stages[0].waiting == result.stages[0].stores


def _publish_retained(port: int, messages: list[tuple[str, bytes]]) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = [client.publish(t, p, qos=1, retain=True) for t, p in messages]
    for info in infos:
        info.wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


def test_watcher_reads_the_retained_states_from_a_real_broker(hq_broker: MosquittoBroker) -> None:
    _publish_retained(
        hq_broker.port,
        [
            (
                "retail/v1/stores/S1/up/model_state",
                model_state("S1", "active", 7, active_version=7),
            ),
            (
                "retail/v1/stores/S2/up/model_state",
                model_state("S2", "rolled_back", 8, active_version=7, reason="p99 4.2x"),
            ),
            ("retail/v1/stores/S2/status", b'{"v":1,"state":"offline"}'),
        ],
    )
    watcher = FleetWatcher("127.0.0.1", hq_broker.port)
    try:
        assert watcher.wait_subscribed(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(watcher.view.rows()) < 2:
            time.sleep(0.05)
        rows = watcher.view.rows()
    finally:
        watcher.close()
    assert rows["S1"].active_version == 7
    assert (rows["S2"].state, rows["S2"].reason, rows["S2"].online) == (
        "rolled_back",
        "p99 4.2x",
        False,
    )
    assert fleet.counts(rows.values()) == {"active": 1, "rolled_back": 1}
