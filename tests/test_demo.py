"""The demo command, run as a user would run it."""

from __future__ import annotations

import json
import subprocess
import sys


def test_demo_summary_json_reports_nothing_lost() -> None:
    """`store-gateway demo --summary-json` exits 0 and its last line is a summary with lost = 0."""
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
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"produced", "received_at_hq", "lost"} <= summary.keys()
    assert summary["produced"] == 2400
    assert summary["received_at_hq"] == summary["produced"]
    assert summary["lost"] == 0
    assert summary["final_status"] == "offline"
