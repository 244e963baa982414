"""systemd's notify protocol: READY, WATCHDOG, STOPPING and STATUS datagrams.

A no-op when ``$NOTIFY_SOCKET`` is unset (foreground runs, tests, the demo).
"""

from __future__ import annotations

import os
import socket


class SystemdNotifier:
    """Sends sd_notify messages to ``$NOTIFY_SOCKET``."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        if addr.startswith("@"):  # abstract namespace
            addr = "\0" + addr[1:]
        self._addr = addr or None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        own = not pid or pid == str(os.getpid())
        # systemd asks for a ping at least every WATCHDOG_USEC; ping at half of it.
        self.watchdog_interval_s = (int(usec) / 1e6 / 2) if usec.isdigit() and own else None
        self._sock: socket.socket | None = None
        if self._addr is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, message: str) -> bool:
        """Send one message such as ``READY=1``; False when there is no socket or it failed."""
        if self._sock is None or self._addr is None:
            return False
        try:
            self._sock.sendto(message.encode(), self._addr)
        except OSError:
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
