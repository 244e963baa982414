"""systemd/store-gateway.service: systemd accepts it silently and it keeps what the daemon needs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT_NAME = "store-gateway.service"
UNIT_PATH = Path(__file__).resolve().parents[1] / "systemd" / UNIT_NAME
# Where install.sh puts the entry point (a link into /opt/store-gateway).
INSTALLED_COMMAND = "/usr/local/bin/store-gateway"
# The host's unit tree, for what the unit refers to (multi-user.target, mosquitto.service).
HOST_UNIT_DIR = Path("/usr/lib/systemd/system")
# systemd-analyze's --threshold counts in tenths of the 0.0-10.0 exposure it prints.
# The unit scores 2.0 ("OK") on systemd 252 (Debian 12, Raspberry Pi OS Bookworm);
# dropping even ProtectSystem= and ProtectHome= only adds 0.4, so the limit is exact.
MAX_EXPOSURE = 20


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value assigned, in order (systemd keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"assignment outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def unit_settings() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT_PATH.read_text())


def only(section: dict[str, list[str]], key: str) -> str:
    """The single value of a key that must be set exactly once."""
    values = section.get(key, [])
    assert len(values) == 1, f"{key}= set {len(values)} times: {values}"
    return values[0]


def this_venvs_command() -> Path:
    """The `store-gateway` entry point of the environment running the tests."""
    command = Path(sys.executable).parent / "store-gateway"
    assert command.exists(), f"{command} missing: install the package (./install.sh --dev)"
    return command


def make_root(tmp_path: Path, unit_text: str) -> Path:
    """A file system root holding the unit as install.sh installs it.

    The unit text is unchanged; `/usr/local/bin/store-gateway` inside the root is a
    copy of this environment's entry point (systemd-analyze fails on a missing
    ExecStart binary), and the host's own units stand in for the rest of the system.
    """
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system" / UNIT_NAME).write_text(unit_text)
    command = root / INSTALLED_COMMAND.lstrip("/")
    command.parent.mkdir(parents=True)
    shutil.copy2(this_venvs_command(), command)
    shutil.copytree(HOST_UNIT_DIR, root / HOST_UNIT_DIR.relative_to("/"), symlinks=True)
    return root


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", *args], capture_output=True, text=True, timeout=60, check=False
    )


def verify_report(root: Path) -> str:
    """Exit status and everything `systemd-analyze verify` printed for the installed unit."""
    proc = analyze("verify", f"--root={root}", UNIT_NAME)
    return f"exit {proc.returncode}\n{proc.stdout}{proc.stderr}".strip()


def test_systemd_analyze_verify_prints_nothing(tmp_path: Path) -> None:
    """`systemd-analyze verify` on the unit as installed exits 0 and prints nothing at all."""
    root = make_root(tmp_path, UNIT_PATH.read_text())
    assert verify_report(root) == "exit 0"


def test_verify_check_catches_a_misspelled_key(tmp_path: Path) -> None:
    """The verify check above fails on a misspelled key, which systemd-analyze exits 0 for."""
    text = UNIT_PATH.read_text().replace("NoNewPrivileges=", "NoNewPrivilege=", 1)
    root = make_root(tmp_path, text)
    report = verify_report(root)
    assert report.startswith("exit 0")
    assert "Unknown key 'NoNewPrivilege'" in report


def test_verify_check_catches_a_missing_command(tmp_path: Path) -> None:
    """The verify check fails when the ExecStart command is not where the unit says."""
    root = make_root(tmp_path, UNIT_PATH.read_text())
    (root / INSTALLED_COMMAND.lstrip("/")).unlink()
    report = verify_report(root)
    assert report != "exit 0"
    assert "is not executable" in report


def test_security_exposure_stays_low(tmp_path: Path) -> None:
    """`systemd-analyze security` rates the unit's exposure at 2.0 or less."""
    root = make_root(tmp_path, UNIT_PATH.read_text())
    proc = analyze(
        "security", "--offline=yes", f"--threshold={MAX_EXPOSURE}", f"--root={root}", UNIT_NAME
    )
    overall = [line for line in proc.stdout.splitlines() if "Overall exposure" in line]
    assert proc.returncode == 0, overall or proc.stdout + proc.stderr


def test_unit_is_a_notify_service_with_a_watchdog() -> None:
    """The daemon reports readiness and liveness itself: notify, main PID only, 30 s watchdog."""
    service = unit_settings()["Service"]
    assert only(service, "Type") == "notify"
    assert only(service, "NotifyAccess") == "main"
    assert only(service, "WatchdogSec") == "30"


def test_unit_restarts_after_failures_and_never_gives_up() -> None:
    """Crashes and watchdog kills restart the daemon every 2 s, with no start limit."""
    settings = unit_settings()
    assert only(settings["Service"], "Restart") == "on-failure"
    assert only(settings["Service"], "RestartSec") == "2"
    assert only(settings["Unit"], "StartLimitIntervalSec") == "0"


def test_unit_waits_longer_than_the_graceful_stop() -> None:
    """systemd waits 10 s before SIGKILL, twice the daemon's 5 s graceful stop."""
    assert only(unit_settings()["Service"], "TimeoutStopSec") == "10"


def test_unit_runs_the_installed_command_on_the_etc_config() -> None:
    """ExecStart runs the command install.sh links on /etc/store-gateway/gateway.toml."""
    service = unit_settings()["Service"]
    assert only(service, "ExecStart") == (
        f"{INSTALLED_COMMAND} run --config /etc/store-gateway/gateway.toml"
    )
    assert "PYTHONUNBUFFERED=1" in service.get("Environment", [])


def test_unit_runs_as_the_static_storegw_user() -> None:
    """The service runs as storegw in bluetooth and dialout, never as a DynamicUser."""
    service = unit_settings()["Service"]
    assert only(service, "User") == "storegw"
    assert only(service, "Group") == "storegw"
    assert set(only(service, "SupplementaryGroups").split()) == {"bluetooth", "dialout"}
    assert "DynamicUser" not in service


def test_unit_owns_its_state_and_config_directories() -> None:
    """systemd provides /var/lib/store-gateway (0750) and /etc/store-gateway to the service."""
    service = unit_settings()["Service"]
    assert only(service, "StateDirectory") == "store-gateway"
    assert only(service, "StateDirectoryMode") == "0750"
    assert only(service, "ConfigurationDirectory") == "store-gateway"
    # What install.sh gives /etc/store-gateway; systemd warns at each start when they differ.
    assert only(service, "ConfigurationDirectoryMode") == "0750"
    assert only(service, "UMask") == "0027"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("ProtectClock", "yes"),
        ("ProtectHostname", "yes"),
        ("RestrictNamespaces", "yes"),
        ("RestrictRealtime", "yes"),
        ("LockPersonality", "yes"),
        ("SystemCallArchitectures", "native"),
    ],
)
def test_unit_keeps_its_hardening(key: str, value: str) -> None:
    """Each hardening setting is present with its value."""
    assert only(unit_settings()["Service"], key) == value


def test_unit_filters_syscalls_to_those_of_ordinary_services() -> None:
    """System calls are limited to @system-service minus @privileged."""
    assert unit_settings()["Service"]["SystemCallFilter"] == ["@system-service", "~@privileged"]


def test_unit_opens_serial_ttys_and_no_other_devices() -> None:
    """DevicePolicy=closed with read-write DeviceAllow for the four serial tty drivers only."""
    service = unit_settings()["Service"]
    assert only(service, "DevicePolicy") == "closed"
    assert sorted(service["DeviceAllow"]) == sorted(
        ["char-ttyUSB rw", "char-ttyACM rw", "char-ttyS rw", "char-ttyAMA rw"]
    )
    # PrivateDevices=yes would hide /dev/ttyUSB* and /dev/serial/by-id/ altogether.
    assert "PrivateDevices" not in service


def test_unit_allows_only_the_socket_families_it_uses() -> None:
    """Sockets: local (D-Bus, journald), IPv4/IPv6 (brokers), netlink and Bluetooth only."""
    families = only(unit_settings()["Service"], "RestrictAddressFamilies").split()
    assert sorted(families) == sorted(
        ["AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK", "AF_BLUETOOTH"]
    )


def test_unit_leaves_memory_deny_write_execute_off() -> None:
    """MemoryDenyWriteExecute stays unset: libffi closures and onnxruntime may need W+X pages."""
    assert "MemoryDenyWriteExecute" not in unit_settings()["Service"]


def test_unit_starts_after_the_broker_and_bluetooth_without_requiring_them() -> None:
    """The unit is ordered after Mosquitto, BlueZ and the network but only Wants= them."""
    unit = unit_settings()["Unit"]
    after = only(unit, "After").split()
    wants = only(unit, "Wants").split()
    for dependency in ("network-online.target", "mosquitto.service", "bluetooth.target"):
        assert dependency in after
        assert dependency in wants
    assert "Requires" not in unit
    assert "BindsTo" not in unit
    assert only(unit_settings()["Install"], "WantedBy") == "multi-user.target"


# The highest peak RSS measured (bench/outbox.py, a 1,000,000-event backlog filled and
# drained), in bytes: the soft limit must sit well above it.
MEASURED_PEAK_RSS = 151 * 10**6
# The smallest Pi the gateway runs on (Zero 2 W) has 512 MB; the kernel, Mosquitto
# and BlueZ need what the hard limit leaves them.
SMALLEST_PI_BYTES = 512 * 2**20
LEFT_FOR_THE_REST_BYTES = 128 * 2**20


def memory_bytes(value: str) -> int:
    """A systemd memory size (``256M``, ``1G``, bytes) in bytes (base 1024, as systemd)."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    if value[-1:].upper() in units:
        return int(float(value[:-1]) * units[value[-1].upper()])
    return int(value)


def test_unit_caps_memory_for_a_pi_above_the_measured_peak() -> None:
    """MemoryHigh and MemoryMax are both set, MemoryHigh < MemoryMax, MemoryHigh is at least
    1.5x the measured peak RSS, and MemoryMax leaves 128 MB of a 512 MB Pi to the rest."""
    service = unit_settings()["Service"]
    high = memory_bytes(only(service, "MemoryHigh"))
    hard = memory_bytes(only(service, "MemoryMax"))
    assert high < hard
    assert high >= 1.5 * MEASURED_PEAK_RSS
    assert hard <= SMALLEST_PI_BYTES - LEFT_FOR_THE_REST_BYTES


def test_memory_check_reads_systemd_sizes() -> None:
    """The size parser of the check above reads systemd's suffixes in base 1024."""
    assert memory_bytes("256M") == 256 * 2**20
    assert memory_bytes("1G") == 2**30
    assert memory_bytes("4096") == 4096
