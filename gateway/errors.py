"""The one error tree of the gateway.

    GatewayError
    ├── ConfigError            the configuration file is missing or invalid
    ├── StorageError           SQLite failed in a way the writer could not absorb
    │   └── StorageFullError   the disk (or the configured size cap) is full
    ├── OutboxRejected         an event could not be taken (shed by policy)
    └── BrokerError            a broker refused or could not be reached

Adapters translate their library's exceptions at the boundary with
``raise Ours(...) from exc`` so callers never see sqlite3 or paho types.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """The configuration is invalid; ``problems`` holds ``(dotted.path, message)`` pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{path}: {msg}" for path, msg in problems))


class StorageError(GatewayError):
    """SQLite failed and the writer could not recover by itself."""


class StorageFullError(StorageError):
    """The database could not grow: the disk or the configured cap is full."""


class OutboxRejected(GatewayError):
    """An event was not taken into the outbox (its class is being shed)."""


class BrokerError(GatewayError):
    """An MQTT broker refused us or could not be reached."""
