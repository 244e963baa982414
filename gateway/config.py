"""Load gateway.toml into one frozen, validated object.

Unknown keys are errors (a typo must not silently fall back to a default), and
every problem is reported as ``dotted.path: what is wrong`` so that
``store-gateway check-config`` can print one line per mistake. Secrets never
live in the TOML: they come from files (mode 0600) or the environment.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gateway.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/store-gateway/gateway.toml")
CONFIG_ENV = "STORE_GATEWAY_CONFIG"
SECRET_KEYS = {"password", "secret", "token", "key", "private_key", "passphrase"}

StoreId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
Port = Annotated[int, Field(ge=1, le=65535)]
# TOML has no path type: a path arrives as a string (the models are otherwise strict).
ConfigPath = Annotated[Path, Field(strict=False)]


class Section(BaseModel):
    """Base of every section: frozen and strict about unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


class StoreSection(Section):
    id: StoreId
    name: str = ""


class StorageSection(Section):
    path: ConfigPath = Path("/var/lib/store-gateway/gateway.db")
    # 0 means only the disk limits the database; otherwise PRAGMA max_page_count.
    max_size_mb: Annotated[float, Field(ge=0)] = 0
    # Deleted when the disk fills so that SQLite has room to delete and checkpoint.
    ballast_mb: Annotated[float, Field(ge=0, le=1024)] = 8


class OutboxSection(Section):
    max_mb: Annotated[float, Field(gt=0)] = 256
    max_age_h: Annotated[float, Field(gt=0)] = 14 * 24
    publish_window: Annotated[int, Field(ge=1, le=20_000)] = 1000
    commit_batch: Annotated[int, Field(ge=1, le=100_000)] = 2000
    loss_report_interval_s: Annotated[float, Field(gt=0)] = 60


class TlsSection(Section):
    ca_file: ConfigPath | None = None
    cert_file: ConfigPath | None = None
    key_file: ConfigPath | None = None

    @model_validator(mode="after")
    def _pair(self) -> TlsSection:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (client certificate)")
        return self


class BrokerSection(Section):
    host: str = "127.0.0.1"
    port: Port = 1883
    client_id: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    username: str | None = None
    password_file: ConfigPath | None = None
    tls: TlsSection | None = None
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    reconnect_min_s: Annotated[float, Field(gt=0, le=3600)] = 0.5
    reconnect_max_s: Annotated[float, Field(gt=0, le=3600)] = 30

    @model_validator(mode="after")
    def _backoff(self) -> BrokerSection:
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s must not exceed reconnect_max_s")
        return self


class HqSection(BrokerSection):
    enabled: bool = True
    port: Port = 8883
    # How long HQ's broker keeps our session (subscriptions, queued downlink).
    session_expiry_s: Annotated[int, Field(ge=0, le=2**32 - 1)] = 7 * 24 * 3600


class StoreBrokerSection(BrokerSection):
    health_interval_s: Annotated[float, Field(ge=0.2, le=3600)] = 10


class LogSection(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class DaemonSection(Section):
    shutdown_timeout_s: Annotated[float, Field(gt=0, le=60)] = 4


class SimulationSection(Section):
    """A scripted event source for the demo and for tests; off in a real store."""

    events_per_s: Annotated[float, Field(ge=0, le=100_000)] = 0
    # strict=False: TOML arrays arrive as lists (the strings inside stay strict).
    kinds: Annotated[tuple[str, ...], Field(strict=False)] = (
        "telemetry",
        "presence",
        "transaction",
    )
    # Stop after this many events (0: no limit).
    max_events: Annotated[int, Field(ge=0)] = 0


class DownlinkSection(Section):
    """HQ -> store messages (profiles, consent, and later kinds)."""

    # HQ payloads are at most 128 KiB (docs/contracts.md section 3); anything larger
    # is refused unparsed.
    max_payload_bytes: Annotated[int, Field(ge=1024, le=128 * 1024)] = 128 * 1024
    # Rejected messages kept for store IT to inspect (reason and size, never the payload).
    dead_letters_kept: Annotated[int, Field(ge=10, le=1_000_000)] = 10_000
    # How long applied message ids are remembered to drop redeliveries (days).
    applied_ids_kept_days: Annotated[float, Field(gt=0, le=365)] = 30
    # HQ messages in the gateway's hands at once (received, not yet acknowledged);
    # the rest wait at HQ's broker. Bounds the downlink's memory to this many
    # payloads (64 x 128 KiB = 8 MiB) while keeping the writer busy (bench/downlink.py).
    max_inflight_messages: Annotated[int, Field(ge=1, le=1024)] = 64


KeyId = Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]


class TrustKeySection(Section):
    """One HQ signing key: its id (first 16 hex of sha256 of the raw public key)."""

    id: KeyId
    public_key: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]

    @model_validator(mode="after")
    def _id_matches(self) -> TrustKeySection:
        expected = hashlib.sha256(bytes.fromhex(self.public_key)).hexdigest()[:16]
        if self.id != expected:
            raise ValueError(f"id is not the key's id (sha256 of the public key: {expected})")
        return self


class TrustSection(Section):
    """HQ's signing keys: every downlink message and every model bundle (docs/downlink.md)."""

    # The initial root: once HQ rotates keys (a signed `keys` document), the store
    # keeps the rotated set in its database and these are no longer used.
    keys: Annotated[tuple[TrustKeySection, ...], Field(strict=False, max_length=32)] = ()
    # Distinct trusted keys that must sign each document.
    threshold: Annotated[int, Field(ge=1, le=32)] = 1
    # Pilot switches, off by default: accept unsigned downlink payloads / bundles.
    allow_unsigned_downlink: bool = False
    allow_unsigned_bundles: bool = False
    # Slack for the Pi's clock when checking `expires` (seconds).
    max_clock_skew_s: Annotated[float, Field(ge=0, le=86_400)] = 300

    @model_validator(mode="after")
    def _threshold(self) -> TrustSection:
        ids = [k.id for k in self.keys]
        if len(set(ids)) != len(ids):
            raise ValueError("keys: ids must be unique")
        if self.keys and self.threshold > len(self.keys):
            raise ValueError(f"threshold: {self.threshold} is more than the {len(ids)} keys")
        return self


class ProfilesSection(Section):
    """The profile cache: opted-in shoppers this store can recognise."""

    # A bound on the cache; above it the soonest-expiring profiles are dropped.
    max_shoppers: Annotated[int, Field(ge=1, le=2_000_000)] = 200_000
    # How often expired profiles and consents are erased (seconds).
    sweep_interval_s: Annotated[float, Field(ge=1, le=86_400)] = 60


ScannerId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
ZoneId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]


class BleSection(Section):
    """The gateway's own Bluetooth radio (bleak on BlueZ)."""

    enabled: bool = False
    adapter: Annotated[str, Field(pattern=r"^hci[0-9]{1,2}$")] = "hci0"
    # active: BlueZ asks for scan responses (names); passive: quieter, needs BlueZ
    # >= 5.56 with --experimental, and or_patterns (built from company_id).
    mode: Literal["active", "passive"] = "active"
    # The shopper token's BLE company id (docs/contracts.md section 2); 0xFFFF is for development.
    company_id: Annotated[int, Field(ge=0, le=0xFFFF)] = 0xFFFF
    # The zone the Pi itself stands in (its radio is scanner "pi").
    zone: ZoneId = "entrance"
    # Added to this radio's RSSI when no reference beacon calibrates it (dB): a
    # reference beacon's measured offset replaces it (firmware_configs/beacons/).
    rssi_offset_db: Annotated[float, Field(ge=-30, le=30)] = 0
    # "bluez": the real radio; "replay": adverts replayed from replay_file (the demo, tests).
    backend: Literal["bluez", "replay"] = "bluez"
    # JSON lines of recorded adverts (gateway/sensing/replay.py); only with "replay".
    replay_file: ConfigPath | None = None
    # Watchdog (habluetooth's values, see gateway/sensing/ble.py for why).
    silent_restart_s: Annotated[float, Field(ge=1, le=3600)] = 90
    check_interval_s: Annotated[float, Field(ge=0.1, le=600)] = 30
    restarts_before_reset: Annotated[int, Field(ge=1, le=100)] = 2
    # Delay before retrying a scanner start that failed (no adapter, BlueZ down); it
    # doubles up to start_retry_max_s and each is jittered (half to all of the delay).
    start_retry_min_s: Annotated[float, Field(ge=0.01, le=60)] = 1
    start_retry_max_s: Annotated[float, Field(ge=0.01, le=600)] = 30
    # Sightings waiting for the presence stage; beyond this BLE sheds (and counts).
    queue_max: Annotated[int, Field(ge=100, le=1_000_000)] = 10_000
    # Seconds ahead of a token window change that the next table is built (off the loop).
    rebuild_ahead_s: Annotated[float, Field(ge=1, le=600)] = 60

    @model_validator(mode="after")
    def _retry(self) -> BleSection:
        if self.start_retry_min_s > self.start_retry_max_s:
            raise ValueError("start_retry_min_s must not exceed start_retry_max_s")
        if (self.backend == "replay") != (self.replay_file is not None):
            raise ValueError('replay_file goes with backend = "replay", and only with it')
        return self


class SatelliteSection(Section):
    """An ESP32 satellite reporting to the store broker, and the zone it stands in."""

    id: ScannerId  # the ESPresense room name, or the OpenMQTTGateway gateway name
    firmware: Literal["espresense", "openmqttgateway"]
    zone: ZoneId
    # As ble.rssi_offset_db, for this satellite.
    rssi_offset_db: Annotated[float, Field(ge=-30, le=30)] = 0


class ReferenceBeaconSection(Section):
    """A fixed beacon used to calibrate scanners (see firmware_configs/beacons/)."""

    id: ScannerId
    uuid: Annotated[
        str,
        Field(
            pattern=r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?"
            r"[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
        ),
    ]
    major: Annotated[int, Field(ge=0, le=65535)]
    minor: Annotated[int, Field(ge=0, le=65535)]
    scanner: ScannerId  # the scanner it sits next to
    expected_rssi_dbm: Annotated[float, Field(ge=-120, le=0)]


class PresenceSection(Section):
    """Zone decisions from smoothed RSSI (see gateway/identity/presence.py for why)."""

    # Defaults are PresenceParams' (gateway/identity/presence.py says why each).
    margin_db: Annotated[float, Field(ge=0, le=40)] = 5
    min_dwell_s: Annotated[float, Field(ge=0, le=600)] = 6
    dwelled_after_s: Annotated[float, Field(gt=0, le=7200)] = 30
    left_after_s: Annotated[float, Field(gt=0, le=7200)] = 60
    # A visit ends this long after the shopper's last signal (any source).
    visit_gap_s: Annotated[float, Field(gt=0, le=86_400)] = 20 * 60


LaneId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")]
# A device path (prefer /dev/serial/by-id/...: it survives re-enumeration) or a
# pyserial URL for serial device servers and ser2net.
SerialPort = Annotated[
    str,
    Field(
        pattern=r"^(/[^\x00]{1,4095}|(socket|rfc2217)://[A-Za-z0-9_.:\[\]-]{1,255}:\d{1,5}([/?].*)?)$"
    ),
]


class LaneSection(Section):
    """One checkout lane's serial feed (a receipt printer tap or a journal/DVR port)."""

    id: LaneId
    port: SerialPort
    # A dialect name in pos.dialects_dir (firmware_configs/pos/), or a path to a dialect file.
    dialect: Annotated[str, Field(min_length=1, max_length=4096)]
    zone: ZoneId = "checkout"
    baudrate: Annotated[int, Field(ge=50, le=4_000_000)] = 9600
    bytesize: Literal[5, 6, 7, 8] = 8
    parity: Literal["N", "E", "O", "M", "S"] = "N"
    # The typing spec allows no float in Literal, but pydantic validates one exactly as
    # wanted (1, 1.5 or 2, nothing else) and names the choices in its error message.
    stopbits: Literal[1, 1.5, 2] = 1  # type: ignore[valid-type]
    # Lock the device (flock) so no second reader splits the stream; device paths only.
    exclusive: bool = True
    # Reopen delay after the device vanished: doubles from min to max, jittered.
    reconnect_min_s: Annotated[float, Field(ge=0.01, le=60)] = 0.2
    reconnect_max_s: Annotated[float, Field(ge=0.01, le=600)] = 10

    @model_validator(mode="after")
    def _backoff(self) -> LaneSection:
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s must not exceed reconnect_max_s")
        return self


class PosSection(Section):
    """What every lane shares: dialect files and the loyalty salt."""

    # Where dialect names in [[lanes]] are looked up (install.sh copies the shipped ones).
    dialects_dir: ConfigPath = Path("/etc/store-gateway/pos")
    # The fleet's loyalty salt (mode 0600), or $STORE_GATEWAY_LOYALTY_SALT: without it
    # loyalty scans are not linked to shoppers and no loyalty number goes upstream.
    loyalty_salt_file: ConfigPath | None = None
    # Seconds over which a lane's printable ratio is judged for the wrong-baud warning.
    wrong_baud_window_s: Annotated[float, Field(ge=0.2, le=60)] = 1.0


ExperimentId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]
ItemId = Annotated[str, Field(min_length=1, max_length=64)]
Hex32Key = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]


class DecisionSection(Section):
    """The next best action: the ranker, its rules and the triggers that ask it."""

    enabled: bool = True
    # The model bundle (docs/contracts.md section 5); a missing or broken one means the
    # popularity fallback, counted in health. The default is the shipped bundle.
    bundle_dir: ConfigPath | None = None
    # Legacy (use [trust] keys): Ed25519 public keys (hex) also trusted for bundles.
    trusted_keys: Annotated[tuple[Hex32Key, ...], Field(strict=False)] = ()
    # onnxruntime intra-op threads: the Pi's CPU is shared with everything else.
    threads: Annotated[int, Field(ge=1, le=4)] = 1
    # Items per decision.
    k: Annotated[int, Field(ge=1, le=50)] = 5
    # The same item is shown at most this often per visit, and at most this many
    # decisions are made per visit and trigger.
    item_cap_per_visit: Annotated[int, Field(ge=1, le=100)] = 2
    decisions_per_visit: Annotated[int, Field(ge=1, le=1000)] = 10
    # Never recommended: item ids, and id prefixes (a category's code range).
    exclude_items: Annotated[tuple[ItemId, ...], Field(strict=False)] = ()
    exclude_prefixes: Annotated[tuple[ItemId, ...], Field(strict=False)] = ()
    # Which triggers run.
    on_arrival: bool = True
    on_dwell: bool = True
    on_basket: bool = True
    # Upstream experiment summaries, per hour.
    summary_interval_s: Annotated[float, Field(ge=1, le=86_400)] = 3600


class ArmSection(Section):
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]
    weight: Annotated[float, Field(gt=0, le=1000)] = 1
    # What this arm shows: the model's ranking, the popularity fallback, or nothing.
    strategy: Literal["model", "popular", "none"] = "model"


class ExperimentSection(Section):
    id: ExperimentId
    # Assignment is sha256(salt / id / shopper): a new salt reshuffles everyone.
    salt: Annotated[str, Field(min_length=8, max_length=128)]
    # Share of shoppers who see nothing, while what they would have seen is recorded.
    holdout: Annotated[float, Field(ge=0, lt=1)] = 0.1
    arms: Annotated[tuple[ArmSection, ...], Field(strict=False, min_length=1, max_length=16)]

    @model_validator(mode="after")
    def _arms(self) -> ExperimentSection:
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError("arm names must be unique")
        if "holdout" in names:
            raise ValueError("'holdout' is the holdout's own arm; pick another name")
        return self


class GatewayConfig(Section):
    store: StoreSection
    storage: StorageSection = StorageSection()
    outbox: OutboxSection = OutboxSection()
    hq: HqSection = HqSection(enabled=False)
    store_broker: StoreBrokerSection = StoreBrokerSection()
    log: LogSection = LogSection()
    daemon: DaemonSection = DaemonSection()
    simulation: SimulationSection = SimulationSection()
    downlink: DownlinkSection = DownlinkSection()
    trust: TrustSection = TrustSection()
    profiles: ProfilesSection = ProfilesSection()
    ble: BleSection = BleSection()
    satellites: Annotated[tuple[SatelliteSection, ...], Field(strict=False)] = ()
    reference_beacons: Annotated[tuple[ReferenceBeaconSection, ...], Field(strict=False)] = ()
    presence: PresenceSection = PresenceSection()
    pos: PosSection = PosSection()
    lanes: Annotated[tuple[LaneSection, ...], Field(strict=False)] = ()
    decision: DecisionSection = DecisionSection()
    experiments: Annotated[tuple[ExperimentSection, ...], Field(strict=False, max_length=8)] = ()

    @model_validator(mode="after")
    def _unique_scanners(self) -> GatewayConfig:
        lane_ids = [lane.id for lane in self.lanes]
        if len(set(lane_ids)) != len(lane_ids):
            raise ValueError("lanes: ids must be unique")
        experiment_ids = [e.id for e in self.experiments]
        if len(set(experiment_ids)) != len(experiment_ids):
            raise ValueError("experiments: ids must be unique")
        ports = [lane.port for lane in self.lanes]
        if len(set(ports)) != len(ports):
            raise ValueError("lanes: two lanes read the same port")
        ids = [s.id for s in self.satellites]
        if "pi" in ids:
            raise ValueError("satellites: 'pi' is the gateway's own radio; pick another id")
        if len(set(ids)) != len(ids):
            raise ValueError("satellites: ids must be unique")
        scanners = {*ids, *(("pi",) if self.ble.enabled else ())}
        for b in self.reference_beacons:
            if b.scanner not in scanners:
                raise ValueError(
                    f"reference_beacons: {b.id!r} sits at scanner {b.scanner!r}, which is "
                    "neither a satellite nor the enabled Pi radio"
                )
        return self


# A stage's own check of a valid config: (dotted.path, message) problems.
ConfigCheck = Callable[["GatewayConfig"], list[tuple[str, str]]]


def _secret_key_problems(raw: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Secrets written into the TOML itself, named with a clearer message than 'extra'."""
    problems: list[tuple[str, str]] = []
    if isinstance(raw, dict):
        for key, value in raw.items():
            path = f"{prefix}{key}"
            if key in SECRET_KEYS and not isinstance(value, dict):
                problems.append(
                    (
                        path,
                        "secrets are not allowed in the TOML; use a *_file (mode 0600) "
                        "or the environment",
                    )
                )
            else:
                problems.extend(_secret_key_problems(value, path + "."))
    return problems


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def _check_secret_files(config: GatewayConfig) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    candidates = []
    for name in ("hq", "store_broker"):
        section: BrokerSection = getattr(config, name)
        if name == "hq" and not config.hq.enabled:
            continue
        candidates.append((f"{name}.password_file", section.password_file))
        if section.tls is not None:
            candidates.append((f"{name}.tls.key_file", section.tls.key_file))
            candidates.append((f"{name}.tls.cert_file", section.tls.cert_file))
            candidates.append((f"{name}.tls.ca_file", section.tls.ca_file))
    candidates.append(("pos.loyalty_salt_file", config.pos.loyalty_salt_file))
    for path_name, path in candidates:
        if path is None:
            continue
        try:
            st = path.stat()
        except OSError as exc:
            problems.append((path_name, f"cannot read {path}: {exc.strerror}"))
            continue
        except ValueError as exc:  # a NUL byte in the path (TOML allows "\u0000")
            problems.append((path_name, f"not a usable path: {exc}"))
            continue
        if path_name.endswith(("password_file", "key_file", "salt_file")) and st.st_mode & (
            stat.S_IRWXG | stat.S_IRWXO
        ):
            problems.append(
                (
                    path_name,
                    f"{path} is readable by others (mode {st.st_mode & 0o777:o}); chmod 600 it",
                )
            )
    return problems


def parse_config(raw: dict[str, Any], *, checks: Iterable[ConfigCheck] = ()) -> GatewayConfig:
    """Validate an already-parsed TOML document; raise ConfigError listing every problem.

    ``checks`` are the stages' own checks of a config that is otherwise valid (each
    returns ``(dotted.path, message)`` problems), e.g. that every lane's dialect file
    loads: the stages own what they read, this module only its shape.
    """
    problems = _secret_key_problems(raw)
    secret_paths = {path for path, _ in problems}
    try:
        config = GatewayConfig.model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            path = _loc(err["loc"])
            if path in secret_paths:
                continue
            message = err["msg"]
            if err["type"] == "extra_forbidden":
                message = "unknown key (check the spelling; see docs/configuration.md)"
            elif err["type"] == "missing":
                message = "required key is missing"
            problems.append((path, message))
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    problems.extend(_check_secret_files(config))
    for check in checks:
        problems.extend(check(config))
    if problems:
        raise ConfigError(problems)
    return config


def resolve_config_path(path: str | os.PathLike[str] | None) -> Path:
    """The config path: explicit, else $STORE_GATEWAY_CONFIG, else the default."""
    if path is not None:
        return Path(path)
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else DEFAULT_CONFIG_PATH


def load_config(
    path: str | os.PathLike[str] | None = None, *, checks: Iterable[ConfigCheck] = ()
) -> GatewayConfig:
    """Read and validate the config file; raise ConfigError with every problem found."""
    resolved = resolve_config_path(path)
    try:
        text = resolved.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError([(str(resolved), f"cannot read: {exc.strerror}")]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([(str(resolved), f"not UTF-8 text: {exc.reason}")]) from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([(str(resolved), f"TOML syntax error: {exc}")]) from exc
    return parse_config(raw, checks=checks)


def read_secret(env_name: str, path: Path | None) -> str | None:
    """A secret from the environment (preferred) or from a file, stripped of its newline."""
    value = os.environ.get(env_name)
    if value:
        return value
    if path is None:
        return None
    return path.read_text(encoding="utf-8").rstrip("\r\n")
