"""Run ``store-gateway run`` as a real child process on a generated config."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any


def toml_value(value: Any) -> str:
    """A TOML literal for the scalars and lists a gateway config uses."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def config_text(sections: dict[str, Any]) -> str:
    """TOML text for ``{"section": {"key": value}}`` (one level of [a.b] tables), and
    ``{"section": [{...}, ...]}`` as an array of tables (``[[section]]``)."""
    out: list[str] = []
    for name, body in sections.items():
        if isinstance(body, list):
            for item in body:
                out.append(f"[[{name}]]")
                out.extend(f"{k} = {toml_value(v)}" for k, v in item.items())
                out.append("")
            continue
        tables = {k: v for k, v in body.items() if isinstance(v, dict)}
        out.append(f"[{name}]")
        out.extend(f"{k} = {toml_value(v)}" for k, v in body.items() if k not in tables)
        for sub, sub_body in tables.items():
            out.append(f"[{name}.{sub}]")
            out.extend(f"{k} = {toml_value(v)}" for k, v in sub_body.items())
        out.append("")
    return "\n".join(out)


def gateway_sections(
    *, store_id: str, db_path: Path, store_port: int, hq_port: int | None = None, **overrides: Any
) -> dict[str, Any]:
    """A config for a test or demo gateway: local brokers, fast reconnects, JSON logs."""
    sections: dict[str, Any] = {
        "store": {"id": store_id},
        "storage": {"path": str(db_path), "ballast_mb": 0},
        "store_broker": {
            "host": "127.0.0.1",
            "port": store_port,
            "health_interval_s": 1,
            "reconnect_min_s": 0.1,
            "reconnect_max_s": 1,
        },
        "hq": (
            {
                "enabled": True,
                "host": "127.0.0.1",
                "port": hq_port,
                "reconnect_min_s": 0.1,
                "reconnect_max_s": 1,
            }
            if hq_port
            else {"enabled": False}
        ),
        "log": {"format": "json", "level": "info"},
    }
    for name, body in overrides.items():
        if isinstance(body, list):
            sections[name] = body
        else:
            sections.setdefault(name, {}).update(body)
    return sections


class GatewayProcess:
    """A gateway daemon child process with its log in a file."""

    def __init__(self, config_path: Path, log_path: Path) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    def start(self, extra_env: dict[str, str] | None = None) -> GatewayProcess:
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in wait()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("NOTIFY_SOCKET", None)
        env.update(extra_env or {})  # e.g. a test's own $NOTIFY_SOCKET and $WATCHDOG_USEC
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(self.config_path)],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.running and self.proc is not None:
            self.proc.send_signal(sig)

    def kill(self) -> int:
        """SIGKILL, like a power cut for the process (not for the disk)."""
        self.signal(signal.SIGKILL)
        return self.wait(10)

    def terminate(self, timeout_s: float = 10.0) -> int:
        """SIGTERM and wait; the exit code."""
        self.signal(signal.SIGTERM)
        return self.wait(timeout_s)

    def wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        try:
            rc = self.proc.wait(timeout_s)
        finally:
            if self._log_file is not None and self.proc.poll() is not None:
                self._log_file.close()
                self._log_file = None
        return rc

    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far (other lines are skipped)."""
        lines = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                continue
        return lines

    def wait_log(self, event: str, timeout_s: float = 15.0) -> dict[str, Any] | None:
        """Wait for a log line whose ``event`` is ``event``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in self.log_lines():
                if line.get("event") == event:
                    return line
            if not self.running:
                return None
            time.sleep(0.05)
        return None


def committed_count(db: Path) -> int:
    """Events a gateway committed, read from its database file by another process: ids
    run from 1 to ``outbox_next_seq - 1`` (rows leave the outbox; the counter never goes back)."""
    conn = sqlite3.connect(str(db), timeout=10)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key='outbox_next_seq'").fetchone()
        return int(row[0]) - 1 if row else 0
    finally:
        conn.close()
