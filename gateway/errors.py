"""The one error tree of the gateway: every exception the project raises on purpose.

    GatewayError
    ├── ConfigError            the configuration file is missing or invalid
    │   └── DialectError       a POS dialect file is invalid
    ├── StorageError           SQLite failed in a way the writer could not absorb
    │   └── StorageFullError   the disk (or the configured size cap) is full
    ├── OutboxRejected         an event could not be taken (shed by policy)
    ├── BrokerError            a broker refused or could not be reached
    ├── DownlinkRejected       an HQ message will not be applied (dead-lettered)
    ├── BundleError            a model bundle is missing, malformed or untrusted
    ├── RankerError            a bundle cannot be served, or a request cannot be ranked
    ├── OrdersError            an orders file cannot be used for training (HQ side)
    └── CliError               a command-line failure to print as is (exit status 1)

Adapters translate their library's exceptions at the boundary with
``raise Ours(...) from exc`` so callers never see sqlite3, paho, serial or
onnxruntime types. ``BundleError`` and ``OrdersError`` are ``ValueError``s too:
both are "this input is unusable", and callers that read files catch them so.
"""

from __future__ import annotations

from enum import StrEnum


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """The configuration is invalid; ``problems`` holds ``(dotted.path, message)`` pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{path}: {msg}" for path, msg in problems))


class DialectError(ConfigError):
    """A dialect file is invalid; ``problems`` holds ``(dotted.path, message)`` pairs."""

    def __init__(self, problems: list[tuple[str, str]], source: str = "<dialect>") -> None:
        self.source = source
        super().__init__(problems)

    def __str__(self) -> str:
        return f"{self.source}: " + "; ".join(f"{path}: {msg}" for path, msg in self.problems)


class StorageError(GatewayError):
    """SQLite failed and the writer could not recover by itself."""


class StorageFullError(StorageError):
    """The database could not grow: the disk or the configured cap is full."""


class OutboxRejected(GatewayError):
    """An event was not taken into the outbox (its class is being shed)."""


class BrokerError(GatewayError):
    """An MQTT broker refused us or could not be reached."""


class DownlinkRejected(GatewayError):
    """A downlink message that will not be applied; ``reason`` is safe to store and log
    (it names field paths and kinds of problem, never a value from the payload)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BundleProblem(StrEnum):
    """Why a bundle was refused: the stable codes the ranker counts in health.

    The values are the ``reason`` strings of ``RankerError`` (and so of health's
    ``decision.ranker.load_failures``): operators and dashboards match on them.
    """

    MISSING = "missing"  # no bundle directory; model.onnx or manifest.json absent or unreadable
    BAD_MANIFEST = "bad_manifest"  # manifest.json not JSON, off the schema, or over its cap
    BAD_SIGNATURE = "bad_signature"  # manifest.sig absent, malformed, or by no trusted key
    BAD_KEY = "bad_key"  # a configured trusted key is not an Ed25519 public key
    BAD_SHA = "bad_sha"  # model.onnx does not match the manifest's sha256
    TOO_LARGE = "too_large"  # model.onnx over its size cap


class BundleError(GatewayError, ValueError):
    """A bundle is missing, malformed, tampered with or untrusted.

    ``reason`` says which (a ``BundleProblem``, for code and health); the
    message says it for people, naming the file at fault.
    """

    def __init__(self, reason: BundleProblem, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class RankerError(GatewayError):
    """A bundle cannot be loaded or a request cannot be ranked.

    ``reason`` is a stable snake_case code counted in health. Loading:
    ``missing``, ``bad_manifest``, ``bad_signature``, ``bad_key``, ``bad_sha``,
    ``too_large`` (a ``BundleProblem``, taken as is from the ``BundleError``
    that refused the bundle), ``runtime_too_old``, ``bad_onnx``, ``wrong_inputs`` (inputs
    or outputs off the contract), ``warmup_failed``, ``not_newer``,
    ``load_failed`` (anything else). Serving: ``bad_request``,
    ``inference_failed``. ``where`` names the bundle concerned.
    """

    def __init__(self, reason: str, detail: str, where: str = "") -> None:
        self.reason = reason
        self.detail = detail
        self.where = where
        super().__init__(f"{reason}: {detail}" + (f" ({where})" if where else ""))


class OrdersError(GatewayError, ValueError):
    """The orders file cannot be used at all (missing, unreadable, wrong columns, empty)."""


class CliError(GatewayError):
    """A user-facing failure: the message is printed as is, the exit status is 1."""
