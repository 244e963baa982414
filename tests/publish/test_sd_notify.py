"""sd_notify over a real AF_UNIX datagram socket: READY, WATCHDOG, STOPPING, abstract names."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.publish.sd_notify import SystemdNotifier


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    """A datagram socket bound in tmp_path, standing in for systemd's notify socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(2)
    yield sock
    sock.close()


def make_notifier(address: str | None, **env: str) -> SystemdNotifier:
    """A notifier given an explicit environment (never the test process's own)."""
    environ = dict(env)
    if address is not None:
        environ["NOTIFY_SOCKET"] = address
    return SystemdNotifier(environ)


def received(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_ready_watchdog_stopping_arrive_in_order(notify_socket: socket.socket) -> None:
    """READY=1, WATCHDOG=1 and STOPPING=1 each arrive as one datagram, in order."""
    notifier = make_notifier(notify_socket.getsockname())
    try:
        assert notifier.enabled
        assert notifier.ready()
        assert notifier.watchdog()
        assert notifier.stopping()
    finally:
        notifier.close()
    assert [received(notify_socket) for _ in range(3)] == ["READY=1", "WATCHDOG=1", "STOPPING=1"]


def test_ready_with_status_sends_both_in_one_datagram(notify_socket: socket.socket) -> None:
    """ready(status) sends READY=1 and STATUS= in the same message, newline-separated."""
    notifier = make_notifier(notify_socket.getsockname())
    try:
        notifier.ready("serving")
    finally:
        notifier.close()
    assert received(notify_socket) == "READY=1\nSTATUS=serving"


def test_abstract_namespace_socket_is_used() -> None:
    """NOTIFY_SOCKET=@name reaches a socket bound in the abstract namespace."""
    name = f"store-gateway-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    notifier = make_notifier("@" + name)
    try:
        assert notifier.watchdog()
        assert received(sock) == "WATCHDOG=1"
    finally:
        notifier.close()
        sock.close()


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    """With WATCHDOG_USEC=20 s the gateway pings every 10 s."""
    notifier = make_notifier(None, WATCHDOG_USEC="20000000")
    assert notifier.watchdog_interval_s == 10.0


def test_watchdog_for_another_pid_is_ignored() -> None:
    """WATCHDOG_PID naming another process means this one does not ping."""
    notifier = make_notifier(None, WATCHDOG_USEC="20000000", WATCHDOG_PID=str(os.getpid() + 1))
    assert notifier.watchdog_interval_s is None


def test_watchdog_for_this_pid_is_honoured() -> None:
    """WATCHDOG_PID naming this process keeps the interval."""
    notifier = make_notifier(None, WATCHDOG_USEC="4000000", WATCHDOG_PID=str(os.getpid()))
    assert notifier.watchdog_interval_s == 2.0


def test_no_watchdog_usec_means_no_interval() -> None:
    """Without WATCHDOG_USEC there is no watchdog to ping."""
    assert make_notifier(None).watchdog_interval_s is None


def test_no_notify_socket_is_a_no_op() -> None:
    """Without NOTIFY_SOCKET every call returns False and nothing is opened."""
    notifier = make_notifier(None)
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False
    notifier.close()


def test_unreachable_socket_returns_false_without_raising(tmp_path: Path) -> None:
    """A NOTIFY_SOCKET path with nobody listening makes notify() return False, not raise."""
    notifier = make_notifier(str(tmp_path / "gone.sock"))
    try:
        assert notifier.enabled
        assert notifier.ready() is False
    finally:
        notifier.close()
