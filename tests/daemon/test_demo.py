"""The demo command, run as a user would run it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_demo_summary_json_reports_nothing_lost() -> None:
    """`store-gateway demo --summary-json` exits 0: nothing lost, every opted-in shopper
    detected, foreign adverts dropped, every receipt scanned at the lane sold."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "demo",
            "--duration",
            "8",
            "--outage",
            "3",
            "--rate",
            "300",
            "--summary-json",
        ],
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"produced", "received_at_hq", "lost"} <= summary.keys()
    # 2,400 scripted events, plus the shoppers' presence and visit events.
    assert summary["produced"] > 2400
    assert summary["received_at_hq"] == summary["produced"]
    assert summary["lost"] == 0
    assert summary["final_status"] == "offline"
    assert summary["shoppers_detected"] == summary["shoppers_opted_in"] == 4
    assert summary["foreign_adverts_dropped"] > 1000
    assert summary["adverts_resolved"] > 0
    # The lane: every receipt scanned on the pty reached HQ complete, one linked to a visit.
    assert summary["receipts_scanned"] == summary["transactions_at_hq"] == 6
    assert summary["transactions_complete"] == 6
    assert summary["items_sold"] >= 18
    assert summary["sales_linked_to_visits"] == 1
    # Decisions: alerts, screens and lane displays, ranked by the shipped model; the
    # shopper who took the associate's suggestion to the till made a conversion.
    assert summary["recommendations_shown"] >= 3
    assert summary["recommendations_by_source"].get("model", 0) >= 1
    assert summary["store_alerts"] >= 1 and summary["store_screens"] >= 1
    assert summary["suggestion_bought"] is not None
    assert summary["conversions"] >= 1
