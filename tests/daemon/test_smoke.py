"""The daemon end to end: scripted events reach HQ through a real outage and SIGTERM is clean."""

from __future__ import annotations

from pathlib import Path

from gateway.testing.daemon import GatewayProcess, config_text, gateway_sections
from gateway.testing.hq import HqReceiver
from gateway.testing.mosquitto import MosquittoBroker


def test_events_survive_a_short_hq_outage(
    tmp_path: Path,
    store_broker: MosquittoBroker,
    hq_broker: MosquittoBroker,
    hq_receiver: HqReceiver,
) -> None:
    """Every event produced while HQ is down arrives once HQ is back, and SIGTERM exits 0."""
    cfg = tmp_path / "gw.toml"
    cfg.write_text(
        config_text(
            gateway_sections(
                store_id="s1",
                db_path=tmp_path / "gw.db",
                store_port=store_broker.port,
                hq_port=hq_broker.port,
                simulation={"events_per_s": 1000, "max_events": 2000},
            )
        )
    )
    gw = GatewayProcess(cfg, tmp_path / "gw.log").start()
    try:
        assert gw.wait_log("gateway_ready") is not None
        hq_broker.stop()
        assert hq_receiver.wait_for(2000, 0.5) is False
        hq_broker.start()
        assert hq_receiver.wait_for(2000, 60), f"only {hq_receiver.count()} arrived"
        assert hq_receiver.ids == {f"s1:{i}" for i in range(1, 2001)}
    finally:
        rc = gw.terminate()
    assert rc == 0
