"""Read an Orders CSV into shoppers' orders (docs/contracts.md section 1: the Instacart schema).

Only the csv module: the columns are looked up by name, extra columns are
ignored, ids stay opaque strings, ``days_since_prior_order`` may be empty.
Memory per row is bounded (a line longer than ``MAX_LINE_CHARS`` is skipped
without being held whole); rows that cannot be read are counted and the first
few described, never fatal. A file that lacks a required column, or has no
usable row, raises ``OrdersError`` with a message fit for the command line.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gateway.errors import OrdersError

REQUIRED_COLUMNS = (
    "order_id",
    "user_id",
    "order_number",
    "order_dow",
    "order_hour_of_day",
    "days_since_prior_order",
    "product_id",
    "add_to_cart_order",
)
# An Instacart line is ~50 characters; 4 KiB leaves room for extra columns while
# keeping a hostile file (one endless line) from being read into memory whole.
MAX_LINE_CHARS = 4096
# Ids longer than this are not ids (a catalogue code is at most ~20 characters).
MAX_ID_CHARS = 64
# How many garbage rows are described individually before only counting.
MAX_PROBLEMS_KEPT = 10


@dataclass(frozen=True)
class Order:
    """One order of one shopper; ``items`` in add-to-cart order, each item once."""

    order_id: str
    user_id: str
    order_number: int
    dow: int
    hour: int
    days_since_prior: float | None
    items: tuple[str, ...]


@dataclass
class OrdersFile:
    """Every shopper's orders, sorted by ``order_number``, plus what was skipped and why."""

    by_user: dict[str, list[Order]]
    rows: int = 0
    bad_rows: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def n_orders(self) -> int:
        return sum(len(v) for v in self.by_user.values())

    def summary(self) -> str:
        return (
            f"{self.rows} rows, {len(self.by_user)} shoppers, {self.n_orders} orders, "
            f"{self.bad_rows} rows skipped"
        )


def _bounded_lines(text: io.TextIOBase, skipped: list[int]) -> Iterator[str]:
    """Lines of ``text``, dropping (and counting in ``skipped[0]``) those over the cap."""
    while True:
        line = text.readline(MAX_LINE_CHARS + 1)
        if not line:
            return
        if len(line) > MAX_LINE_CHARS and not line.endswith("\n"):
            skipped[0] += 1
            while True:  # consume the rest of the over-long line in bounded chunks
                rest = text.readline(MAX_LINE_CHARS)
                if not rest or rest.endswith("\n"):
                    break
            continue
        yield line


def _int_field(value: str, name: str, lo: int, hi: int) -> int:
    # Instacart's own files write add_to_cart_order as "1.0": accept integral floats.
    number = float(value)
    if number != int(number) or not lo <= number <= hi:
        raise ValueError(f"{name} {value!r} out of range {lo}..{hi}")
    return int(number)


def _id_field(value: str, name: str) -> str:
    value = value.strip()
    if not value or len(value) > MAX_ID_CHARS:
        raise ValueError(f"{name} {value[:20]!r} is not an id")
    return value


def read_orders(path: str | Path) -> OrdersFile:
    """Read ``path``; raise ``OrdersError`` when it cannot be used at all."""
    path = Path(path)
    try:
        handle = path.open(encoding="utf-8", errors="replace", newline="")
    except OSError as exc:
        raise OrdersError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    with handle:
        return _read(handle, str(path))


def _read(handle: io.TextIOBase, source: str) -> OrdersFile:
    skipped = [0]
    reader = csv.reader(_bounded_lines(handle, skipped))
    try:
        header = next(reader)
    except StopIteration:
        raise OrdersError(f"{source}: empty file (no header line)") from None
    except csv.Error as exc:
        raise OrdersError(f"{source}: unreadable header: {exc}") from exc
    columns = [h.strip().lstrip("\ufeff") for h in header]
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise OrdersError(
            f"{source}: missing column(s) {', '.join(missing)} (need {', '.join(REQUIRED_COLUMNS)})"
        )
    at = {c: columns.index(c) for c in REQUIRED_COLUMNS}
    width = max(at.values()) + 1

    # order key -> (header fields, {item: add_to_cart position})
    heads: dict[tuple[str, str], tuple[int, int, int, float | None]] = {}
    lines: dict[tuple[str, str], dict[str, int]] = {}
    result = OrdersFile(by_user={})
    line_no = 1

    def bad(reason: str) -> None:
        result.bad_rows += 1
        if len(result.problems) < MAX_PROBLEMS_KEPT:
            result.problems.append(f"{source}: line {line_no}: {reason}")

    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            line_no += 1
            bad(f"unreadable CSV ({exc})")
            continue
        line_no = reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue
        result.rows += 1
        if len(row) < width:
            bad(f"{len(row)} fields, expected at least {width}")
            continue
        try:
            user = _id_field(row[at["user_id"]], "user_id")
            order_id = _id_field(row[at["order_id"]], "order_id")
            item = _id_field(row[at["product_id"]], "product_id")
            number = _int_field(row[at["order_number"]], "order_number", 0, 10**6)
            dow = _int_field(row[at["order_dow"]], "order_dow", 0, 6)
            hour = _int_field(row[at["order_hour_of_day"]], "order_hour_of_day", 0, 23)
            position = _int_field(row[at["add_to_cart_order"]], "add_to_cart_order", 0, 10**6)
            gap_text = row[at["days_since_prior_order"]].strip()
            gap = float(gap_text) if gap_text else None
            if gap is not None and not 0 <= gap <= 10**4:
                raise ValueError(f"days_since_prior_order {gap_text!r} out of range")
        except ValueError as exc:
            bad(str(exc))
            continue
        key = (user, order_id)
        head = (number, dow, hour, gap)
        seen = heads.setdefault(key, head)
        if seen[0] != number:
            bad(f"order {order_id} has two order_numbers")
            continue
        basket = lines.setdefault(key, {})
        if item not in basket or position < basket[item]:
            basket[item] = position
    skipped_long = skipped[0]
    if skipped_long:
        result.bad_rows += skipped_long
        result.problems.append(f"{source}: {skipped_long} line(s) over {MAX_LINE_CHARS} chars")
    for (user, order_id), (number, dow, hour, gap) in heads.items():
        basket = lines[(user, order_id)]
        items = tuple(sorted(basket, key=lambda i: (basket[i], i)))
        result.by_user.setdefault(user, []).append(
            Order(order_id, user, number, dow, hour, gap, items)
        )
    for orders in result.by_user.values():
        orders.sort(key=lambda o: (o.order_number, o.order_id))
    if not result.by_user:
        raise OrdersError(f"{source}: no usable order rows ({result.bad_rows} rows skipped)")
    return result


def write_orders(path: str | Path, orders: list[Order]) -> None:
    """Write ``orders`` as an Orders CSV (the same columns, add_to_cart_order from 1)."""
    with Path(path).open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(REQUIRED_COLUMNS)
        for o in orders:
            gap = "" if o.days_since_prior is None else f"{o.days_since_prior:g}"
            for position, item in enumerate(o.items, start=1):
                writer.writerow(
                    [o.order_id, o.user_id, o.order_number, o.dow, o.hour, gap, item, position]
                )
