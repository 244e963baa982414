"""POS lanes in the config (check-config finds bad lanes and dialects) and `pos replay`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.checkout.flow import config_problems
from gateway.config import parse_config
from gateway.errors import ConfigError

POS_DIR = Path(__file__).resolve().parent.parent / "firmware_configs" / "pos"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def problems(raw: dict[str, Any]) -> list[tuple[str, str]]:
    """The problems check-config reports: the config's own and the checkout stage's."""
    with pytest.raises(ConfigError) as exc:
        parse_config(raw, checks=(config_problems,))
    return exc.value.problems


def lanes_config(*lanes: dict[str, Any], **pos: Any) -> dict[str, Any]:
    return {
        "store": {"id": "s1"},
        "pos": {"dialects_dir": str(POS_DIR), **pos},
        "lanes": list(lanes),
    }


def test_lanes_with_shipped_dialects_validate() -> None:
    cfg = parse_config(
        lanes_config(
            {
                "id": "lane-1",
                "port": "/dev/serial/by-id/usb-FTDI-if00-port0",
                "dialect": "epson-grocery",
            },
            {
                "id": "lane-2",
                "port": "socket://10.0.0.5:4001",
                "dialect": "journal-dvr",
                "baudrate": 19200,
            },
            {
                "id": "lane-3",
                "port": "rfc2217://pos-3.local:2217",
                "dialect": "eu-escpos",
                "parity": "E",
                "bytesize": 7,
                "stopbits": 2,
            },
        )
    )
    assert [lane.id for lane in cfg.lanes] == ["lane-1", "lane-2", "lane-3"]
    assert cfg.lanes[2].parity == "E"


@pytest.mark.parametrize(
    ("lane", "path", "needle"),
    [
        ({"port": "COM3"}, "lanes.0.port", "pattern"),
        ({"port": "tcp://10.0.0.5:4001"}, "lanes.0.port", "pattern"),
        ({"port": "/dev/ttyUSB0\u0000x"}, "lanes.0.port", "pattern"),
        ({"id": "lane 1"}, "lanes.0.id", "pattern"),
        ({"baudrate": 0}, "lanes.0.baudrate", "greater"),
        ({"baudrate": "9600"}, "lanes.0.baudrate", "integer"),
        ({"parity": "X"}, "lanes.0.parity", "'N'"),
        ({"stopbits": 3}, "lanes.0.stopbits", "1"),
        ({"reconnect_min_s": 5, "reconnect_max_s": 1}, "lanes.0", "reconnect_min_s"),
        ({"flow_control": True}, "lanes.0.flow_control", "unknown key"),
        ({"dialect": "no-such-dialect"}, "lanes.0.dialect", "cannot read"),
    ],
)
def test_bad_lane_settings_are_named(lane: dict[str, Any], path: str, needle: str) -> None:
    base = {"id": "lane-1", "port": "/dev/ttyUSB0", "dialect": "journal-dvr"}
    found = problems(lanes_config({**base, **lane}))
    assert any(p == path and needle in m for p, m in found), found


def test_duplicate_lanes_are_refused() -> None:
    found = problems(
        lanes_config(
            {"id": "lane-1", "port": "/dev/ttyUSB0", "dialect": "journal-dvr"},
            {"id": "lane-1", "port": "/dev/ttyUSB1", "dialect": "journal-dvr"},
        )
    )
    assert any("ids must be unique" in m for _, m in found), found
    found = problems(
        lanes_config(
            {"id": "lane-1", "port": "/dev/ttyUSB0", "dialect": "journal-dvr"},
            {"id": "lane-2", "port": "/dev/ttyUSB0", "dialect": "journal-dvr"},
        )
    )
    assert any("same port" in m for _, m in found), found


def test_a_broken_dialect_is_reported_at_its_lane(tmp_path: Path) -> None:
    """check-config names the lane and the dialect's own dotted path."""
    text = (POS_DIR / "journal-dvr.toml").read_text()
    bad = tmp_path / "mine.toml"
    bad.write_text(text.replace("item = ['^", "item = ['(^", 1))  # an unbalanced group
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(
        '[store]\nid = "s1"\n[storage]\npath = "' + str(tmp_path / "g.db") + '"\n'
        '[[lanes]]\nid = "lane-1"\nport = "/dev/ttyUSB0"\ndialect = "' + str(bad) + '"\n'
    )
    out = run_cli("check-config", "--config", str(cfg))
    assert out.returncode == 1
    assert f"lanes.0.dialect: {bad}: patterns.item.0" in out.stderr, out.stderr


def test_loyalty_salt_file_must_be_private(tmp_path: Path) -> None:
    salt = tmp_path / "loyalty.salt"
    salt.write_bytes(b"fleet-salt")
    os.chmod(salt, 0o644)
    lane = {"id": "lane-1", "port": "/dev/ttyUSB0", "dialect": "journal-dvr"}
    found = problems(lanes_config(lane, loyalty_salt_file=str(salt)))
    assert any(p == "pos.loyalty_salt_file" and "chmod 600" in m for p, m in found), found
    os.chmod(salt, 0o600)
    assert parse_config(lanes_config(lane, loyalty_salt_file=str(salt))).pos.loyalty_salt_file


def test_pos_replay_prints_what_the_dialect_extracts() -> None:
    expected = json.loads((POS_DIR / "captures" / "journal-dvr.expected.json").read_text())
    out = run_cli(
        "pos",
        "replay",
        "--dialect",
        str(POS_DIR / "journal-dvr.toml"),
        str(POS_DIR / "captures" / "journal-dvr.bin"),
        "--json",
    )
    assert out.returncode == 0, out.stderr
    got = [json.loads(line) for line in out.stdout.splitlines()]
    assert got == expected
    assert "4111111111111111" not in out.stdout
    human = run_cli(
        "pos",
        "replay",
        "--dialect",
        str(POS_DIR / "journal-dvr.toml"),
        str(POS_DIR / "captures" / "journal-dvr.bin"),
    )
    assert human.returncode == 0, human.stderr
    first = expected[0]
    assert f"transaction {first['transaction']}: complete" in human.stdout
    assert f"{len(expected)} transactions" in human.stdout
    assert "matches the lines" in human.stdout


def test_pos_replay_bad_inputs_fail_clearly(tmp_path: Path) -> None:
    capture = POS_DIR / "captures" / "journal-dvr.bin"
    missing = run_cli("pos", "replay", "--dialect", str(tmp_path / "none.toml"), str(capture))
    assert missing.returncode == 1
    assert "cannot read" in missing.stderr and "Traceback" not in missing.stderr
    garbage = tmp_path / "garbage.toml"
    garbage.write_bytes(b"\xff\xfe not toml")
    out = run_cli("pos", "replay", "--dialect", str(garbage), str(capture))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    no_capture = run_cli(
        "pos", "replay", "--dialect", str(POS_DIR / "journal-dvr.toml"), str(tmp_path / "none.bin")
    )
    assert no_capture.returncode == 1 and "cannot read" in no_capture.stderr
    # Random bytes as a capture: no transaction, no crash.
    noise = tmp_path / "noise.bin"
    noise.write_bytes(os.urandom(200_000))
    out = run_cli(
        "pos", "replay", "--dialect", str(POS_DIR / "epson-grocery.toml"), str(noise), "--json"
    )
    assert out.returncode == 0, out.stderr
