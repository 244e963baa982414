"""Receipts in the shipped ``journal-dvr`` dialect, line by line, for tests, bench and demo.

A journal/DVR port prints one event per line as the cashier scans, which is
what gives item-by-item timing (a receipt printer usually gets the whole
receipt after payment). The format is the one firmware_configs/pos/journal-dvr.toml
reads and captures/make_captures.py documents.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any


@dataclass(frozen=True)
class ScannedItem:
    code: str
    description: str
    amount: str  # "4.98"


def _line(at: dt.datetime, lane: str, event: str, rest: str) -> bytes:
    return f"{at:%Y-%m-%d %H:%M:%S} {lane} {event:<9} {rest}\r\n".encode("ascii")


def journal_receipt(
    number: int,
    items: list[ScannedItem],
    *,
    lane: str = "L01",
    loyalty: str | None = None,
    card: str | None = None,
    at: dt.datetime | None = None,
) -> list[bytes]:
    """The journal lines of one complete sale, in the order the till prints them.

    ``card`` is a full card number printed on the tender line, as some journals
    do: the dialect drops that line before anything keeps it.
    """
    at = at or dt.datetime(2026, 12, 1, 10, 0, 0)
    step = dt.timedelta(seconds=3)
    lines = [_line(at, lane, "TXN START", f"#{number:06d} OP 0001")]
    for item in items:
        at += step
        lines.append(
            _line(at, lane, "ITEM", f"{item.code:<13} {item.description:<24} {item.amount:>6}")
        )
    if loyalty:
        at += step
        lines.append(_line(at, lane, "LOYALTY", loyalty))
    total = sum((Decimal(i.amount) for i in items), Decimal("0"))
    for event, value in (("SUBTOTAL", total), ("TAX", Decimal("0.00")), ("TOTAL", total)):
        at += step
        lines.append(_line(at, lane, event, f"{value:>9}"))
    at += step
    tender = f"VISA {card} AUTH 123456 {total:>9}" if card else f"CASH {total:>9}"
    lines.append(_line(at, lane, "TENDER", tender))
    at += step
    lines.append(_line(at, lane, "TXN END", f"#{number:06d}"))
    return lines


GROCERIES = (
    ScannedItem("0000000123457", "OAT MILK 1L", "2.49"),
    ScannedItem("0007874235187", "WHOLE MILK GAL", "3.48"),
    ScannedItem("0001200000128", "COLA 12PK", "6.98"),
    ScannedItem("0002840004576", "CHIPS 10OZ", "4.29"),
    ScannedItem("0000000045678", "SOURDOUGH LOAF", "3.99"),
    ScannedItem("0000000011111", "FREE RANGE EGGS 12", "4.79"),
    ScannedItem("0000000022222", "ESPRESSO BEANS", "8.99"),
    ScannedItem("0000000033333", "GREEK YOGURT", "1.29"),
)


def contract(txn: Any) -> dict[str, Any]:
    """A dialect's ``Transaction`` as the transaction object of docs/contracts.md section 1,
    raw loyalty number included, built the way ``pos replay --json`` builds it."""
    from gateway.checkout.flow import completed
    from gateway.publish.payloads import transaction_object

    return transaction_object(completed(txn, 0.0, loyalty=txn.loyalty))
