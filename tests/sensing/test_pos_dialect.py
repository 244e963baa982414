"""POS dialects: the schema, the transaction engine, the shipped dialects and their captures.

The shipped captures are compared with the transactions their generator planted
(``firmware_configs/pos/captures/*.expected.json``), which come from the
generator's own data, never from running this engine.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import random
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sensing.escpos import Barcode, Cut, Line, Reset, Token
from gateway.sensing.pos_dialect import (
    MAX_LINE_CHARS,
    Dialect,
    DialectError,
    DialectFile,
    DialectParser,
    PosEvent,
    Transaction,
    TransactionChanged,
    TransactionEnded,
    TransactionEngine,
    load_dialect,
    mask_pans,
    normalise_number,
    parse_dialect,
    replay,
)
from gateway.testing.receipts import contract

POS_DIR = Path(__file__).resolve().parents[2] / "firmware_configs" / "pos"
CAPTURES = POS_DIR / "captures"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "pos-dialects.md"
SHIPPED = ("epson-grocery", "journal-dvr", "eu-escpos")
# The public test PANs the capture generator plants (Luhn-valid, never issued).
TEST_PANS = ("4111111111111111", "5555555555554444", "4000056655665556")


# --- builders ---------------------------------------------------------------------------


def dialect_doc(**overrides: Any) -> dict[str, Any]:
    """A small line-based dialect, as a parsed TOML document; top-level keys overridable."""
    doc: dict[str, Any] = {
        "name": "test",
        "escpos": False,
        "end_on_cut": True,
        "idle_timeout_s": 60,
        "markers": {
            "start": [r"^START(?: #(?P<transaction>\d+))?$"],
            "end": [r"^END$"],
            "cancel": [r"^CANCEL$"],
        },
        "patterns": {
            "transaction": [r"^TXN (?P<transaction>\d+)$"],
            "barcode": [r"^T(?P<transaction>\d+)$"],
            "item": [
                r"^(?:(?P<code>\d{4,13}) )?(?P<description>[A-Z][A-Z0-9 *]*?)\s+(?P<amount>\S+)$"
            ],
            "quantity": [r"^\s+(?P<quantity>\d+) @ (?P<unit_price>\S+)$"],
            "weight": [r"^\s+(?P<quantity>[\d.,]+) (?P<unit>lb|KG) @ (?P<unit_price>\S+)$"],
            "void": [
                r"^VOID(?: (?P<code>\d{4,13}))?(?: (?P<description>[A-Z][A-Z0-9 ]*?))?"
                r"(?:\s+(?P<amount>[\d.,()-]+))?$"
            ],
            "discount": [r"^DISC (?P<description>.+?)\s+(?P<amount>\S+)$"],
            "loyalty": [r"^MEMBER (?P<loyalty>[\d ]+)$"],
            "subtotal": [r"^SUBTOTAL (?P<amount>\S+)$"],
            "tax": [r"^TAX (?P<amount>\S+)$"],
            "total": [r"^TOTAL (?P<total>\S+)$"],
            "tender": [r"^(?P<type>VISA|CASH|V1S4\S*) TEND", r"^ACCOUNT"],
            "ignore": [r"^NOISE"],
            "redact": [r"(?<=CASHIER )\w+"],
        },
    }
    doc.update(overrides)
    return doc


def make_dialect(**overrides: Any) -> Dialect:
    return parse_dialect(dialect_doc(**overrides))


def lines(*texts: str, ts: float = 0.0, step: float = 0.0) -> list[Token]:
    return [Line(t, ts + i * step) for i, t in enumerate(texts)]


def run(
    tokens: Iterable[Token], dialect: Dialect | None = None
) -> tuple[list[PosEvent], TransactionEngine]:
    engine = TransactionEngine(dialect or make_dialect())
    return engine.feed(tokens), engine


def ended(events: Sequence[PosEvent]) -> list[Transaction]:
    return [e.txn for e in events if isinstance(e, TransactionEnded)]


def one(*texts: str, dialect: Dialect | None = None) -> Transaction:
    """The single transaction made of START, the given lines and END."""
    events, _ = run(lines("START", *texts, "END"), dialect)
    (txn,) = ended(events)
    return txn


def problems_of(doc: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(DialectError) as info:
        parse_dialect(doc)
    return info.value.problems


def shipped(name: str) -> Dialect:
    return load_dialect(POS_DIR / f"{name}.toml")


def capture(name: str) -> bytes:
    return (CAPTURES / f"{name}.bin").read_bytes()


def expected(name: str) -> list[dict[str, Any]]:
    return json.loads((CAPTURES / f"{name}.expected.json").read_text(encoding="utf-8"))


def generator() -> ModuleType:
    path = CAPTURES / "make_captures.py"
    spec = importlib.util.spec_from_file_location("make_captures", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_captures"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


# --- item lines and modifiers ------------------------------------------------------------


def test_item_line_gives_code_description_quantity_and_amount() -> None:
    """An item line yields its groups; with no quantity printed it counts one unit."""
    txn = one("0000000123457 OAT MILK 1L    4.98")
    assert contract(txn)["items"] == [
        {"code": "0000000123457", "description": "OAT MILK 1L", "quantity": "1", "amount": "4.98"}
    ]


def test_quantity_line_after_sets_the_previous_items_quantity() -> None:
    """With modifiers.quantity = "after", "2 @ 2.49" belongs to the item above it."""
    txn = one("OAT MILK 4.98", "   2 @ 2.49")
    assert (txn.items[0].quantity, txn.items[0].unit_price) == ("2", "2.49")


def test_quantity_line_before_waits_for_the_next_item() -> None:
    """With modifiers.quantity = "before", the next item takes the pending quantity."""
    d = make_dialect(modifiers={"quantity": "before"})
    txn = one("OAT MILK 2.49", "   2 @ 2.49", "SODA 3.98", dialect=d)
    assert [i.quantity for i in txn.items] == ["1", "2"]


def test_weight_line_sets_quantity_and_lower_case_unit() -> None:
    """A weight line gives the item a decimal quantity and its unit."""
    d = make_dialect(decimal=",")
    txn = one("GOUDA 2,49", "   0,834 KG @ 2,99", dialect=d)
    item = contract(txn)["items"][0]
    assert (item["quantity"], item["unit"], item["amount"]) == ("0.834", "kg", "2.49")


def test_modifier_after_anything_but_an_item_is_counted_not_applied() -> None:
    """A quantity line after a discount does not reach back to an earlier item."""
    events, engine = run(lines("START", "OAT MILK 4.98", "DISC X 0.50", "   2 @ 2.49", "END"))
    assert ended(events)[0].items[0].quantity == "1"
    assert engine.stats()["orphan_modifiers"] == 1


# --- money -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("printed", "decimal", "value"),
    [
        ("4.98", ".", "4.98"),
        ("4.90", ".", "4.90"),
        ("2,49", ",", "2.49"),
        ("1.99-", ".", "-1.99"),
        ("1,99-", ",", "-1.99"),
        ("(1.99)", ".", "-1.99"),
        ("-0,30", ",", "-0.30"),
        ("1,234.56", ".", "1234.56"),
        ("1.234,56", ",", "1234.56"),
        ("$4.98", ".", "4.98"),
        ("€ 4,98", ",", "4.98"),
        (".99", ".", "0.99"),
        ("0,834", ",", "0.834"),
        ("12", ".", "12"),
        ("abc", ".", None),
        ("", ".", None),
        ("-", ".", None),
        ("1.2.3", ".", None),
        ("1" * 16, ".", None),
    ],
)
def test_printed_numbers_are_normalised(printed: str, decimal: str, value: str | None) -> None:
    """Comma decimals become points; trailing minus and parentheses become a leading minus."""
    assert normalise_number(printed, decimal) == value


def test_discount_amounts_are_always_negative() -> None:
    """However the POS prints a discount, it is recorded as a negative amount."""
    txn = one("OAT MILK 4.98", "DISC A 0.50", "DISC B 0.25-", "DISC C (0.10)", "DISC D -0.05")
    assert [d.amount for d in txn.discounts] == ["-0.50", "-0.25", "-0.10", "-0.05"]


def test_unreadable_amount_is_unknown_and_counted() -> None:
    """An amount group that holds no number becomes None, never a guess."""
    events, engine = run(lines("START", "OAT MILK 4..98", "END"))
    assert ended(events)[0].items[0].amount is None
    assert engine.stats()["bad_numbers"] == 1


# --- voids -------------------------------------------------------------------------------


def test_void_by_code_removes_that_item() -> None:
    """A void naming a code takes back the last item with that code (leading zeros aside)."""
    txn = one("0000000678902 SODA 1.99", "4011 BANANAS 0.65", "VOID 678902 1.99")
    assert [i.description for i in txn.items] == ["BANANAS"]
    assert contract(txn)["voids"] == [{"code": "678902", "description": "SODA", "amount": "-1.99"}]


def test_void_by_description_when_no_code() -> None:
    """A void naming only a description takes back the item with that description."""
    txn = one("SODA 1.99", "BANANAS 0.65", "VOID SODA 1.99")
    assert [i.description for i in txn.items] == ["BANANAS"]
    assert txn.voids[0].amount == "-1.99"


def test_void_by_amount_when_it_names_no_item() -> None:
    """A void with only an amount takes back the last item of that amount."""
    txn = one("SODA 1.99", "BANANAS 0.65", "MILK 1.99", "VOID    1.99-")
    assert [i.description for i in txn.items] == ["SODA", "BANANAS"]
    assert (txn.voids[0].description, txn.voids[0].amount) == ("MILK", "-1.99")


def test_bare_void_takes_back_the_last_item() -> None:
    """A void line naming nothing takes back the last item, and borrows its fields."""
    txn = one("SODA 1.99", "BANANAS 0.65", "VOID")
    assert [i.description for i in txn.items] == ["SODA"]
    assert contract(txn)["voids"] == [{"code": None, "description": "BANANAS", "amount": "-0.65"}]


def test_void_for_an_unseen_code_is_recorded_but_removes_nothing() -> None:
    """A code that matches nothing is an item we never saw: no amount fallback."""
    events, engine = run(lines("START", "1234 SODA 1.99", "VOID 9999 1.99", "END"))
    (txn,) = ended(events)
    assert [i.code for i in txn.items] == ["1234"]
    assert contract(txn)["voids"] == [{"code": "9999", "description": None, "amount": "-1.99"}]
    assert engine.stats()["unmatched_voids"] == 1


# --- totals ------------------------------------------------------------------------------


def test_totals_match_adds_items_discounts_and_tax() -> None:
    """sum(items) + sum(discounts) + sum(tax) == total gives totals_match True."""
    txn = one("OAT MILK 4.98", "DISC MEMBER 0.50", "TAX 0.31", "TOTAL 4.79")
    assert (txn.total, txn.totals_match) == ("4.79", True)


def test_totals_mismatch_is_flagged_not_fixed() -> None:
    """A printed total that disagrees stays as printed and is flagged False and counted."""
    events, engine = run(lines("START", "OAT MILK 4.98", "TOTAL 5.00", "END"))
    (txn,) = ended(events)
    assert (txn.total, txn.totals_match) == ("5.00", False)
    assert engine.stats()["totals_mismatches"] == 1


def test_totals_match_unknown_without_a_total_or_with_an_unknown_amount() -> None:
    """No total, or an item whose amount could not be read, gives totals_match None."""
    assert one("OAT MILK 4.98").totals_match is None
    assert one("OAT MILK 4..98", "SODA 1.00", "TOTAL 1.00").totals_match is None


def test_tax_included_is_recorded_but_not_added() -> None:
    """With tax_included, VAT lines are already inside the item prices."""
    d = make_dialect(tax_included=True)
    txn = one("MILK 1.07", "TAX 0.07", "TOTAL 1.07", dialect=d)
    assert (txn.taxes, txn.totals_match) == (["0.07"], True)


# --- loyalty and transaction numbers -----------------------------------------------------


def test_loyalty_number_is_kept_without_spaces_and_out_of_repr() -> None:
    """The loyalty number loses its print spacing; repr() never shows it (logs)."""
    txn = one("MEMBER 9900 0111 2223 3")
    assert txn.loyalty == "9900011122233"
    assert "9900" not in repr(txn)


def test_transaction_number_from_marker_line_or_barcode_first_wins() -> None:
    """The number comes from the start marker, a pattern or a barcode; the first one stays."""
    events, engine = run(
        [Line("START #42", 0), Line("TXN 43", 0), Barcode("T44", 0), Line("END", 0)]
    )
    assert ended(events)[0].number == "42"
    assert engine.stats()["number_conflicts"] == 2
    events, _ = run([Line("START", 0), Barcode("T44", 0), Line("END", 0)])
    assert ended(events)[0].number == "44"


# --- transaction boundaries ----------------------------------------------------------------


def test_lines_outside_a_transaction_are_ignored() -> None:
    """Before the start marker and after the end, even item-like lines count for nothing."""
    events, engine = run(lines("SODA 1.99", "START", "MILK 1.00", "END", "BREAD 2.00"))
    assert [i.description for i in ended(events)[0].items] == ["MILK"]
    assert engine.stats()["outside"] == 2


def test_end_marker_completes() -> None:
    """The end marker ends the transaction as complete with reason end_marker."""
    txn = one("MILK 1.00")
    assert (txn.status, txn.reason) == ("complete", "end_marker")


def test_cancel_marker_cancels() -> None:
    """The cancel marker ends the transaction as cancelled, items as they stood."""
    events, _ = run(lines("START", "MILK 1.00", "CANCEL"))
    (txn,) = ended(events)
    assert (txn.status, txn.reason, len(txn.items)) == ("cancelled", "cancel_marker", 1)


def test_cut_ends_when_end_on_cut() -> None:
    """A paper cut completes the transaction, at the cut, when the dialect says end_on_cut."""
    events, _ = run([Line("START", 0), Line("MILK 1.00", 1), Cut(2)])
    (event,) = [e for e in events if isinstance(e, TransactionEnded)]
    assert (event.txn.status, event.txn.reason, event.ts) == ("complete", "cut", 2)


def test_cut_is_ignored_without_end_on_cut() -> None:
    """Without end_on_cut a cut does not end anything."""
    events, engine = run([Line("START", 0), Cut(1)], make_dialect(end_on_cut=False))
    assert ended(events) == []
    assert engine.stats()["open"] is True


def test_reset_does_not_end_a_transaction() -> None:
    """ESC @ mid-receipt is not a boundary; the markers decide."""
    events, _ = run([Line("START", 0), Line("MILK 1.00", 0), Reset(1), Line("END", 2)])
    (txn,) = ended(events)
    assert (txn.status, len(txn.items)) == ("complete", 1)


def test_new_start_ends_the_open_transaction_as_incomplete() -> None:
    """A start while one is open: the open one is incomplete (new_start), a new one opens."""
    events, engine = run(lines("START #1", "MILK 1.00", "START #2", "SODA 2.00", "END"))
    first, second = ended(events)
    assert (first.number, first.status, first.reason) == ("1", "incomplete", "new_start")
    assert (second.number, second.status, [i.description for i in second.items]) == (
        "2",
        "complete",
        ["SODA"],
    )
    assert engine.stats()["transactions"] == {"complete": 1, "cancelled": 0, "incomplete": 1}


def test_idle_timeout_ends_incomplete_once_idle_timeout_s_after_the_last_activity() -> None:
    """tick() idle_timeout_s after the last line ends the open transaction, not a second sooner."""
    engine = TransactionEngine(make_dialect(idle_timeout_s=60))
    engine.feed([Line("START", 100), Line("MILK 1.00", 110)])
    assert engine.tick(169) == []
    (event,) = engine.tick(170)
    assert isinstance(event, TransactionEnded)
    assert (event.txn.status, event.txn.reason, event.ts) == ("incomplete", "idle_timeout", 170)


def test_idle_timeout_is_noticed_by_the_next_token_without_tick() -> None:
    """A line arriving after the idle timeout first ends the stale transaction."""
    events, _ = run([Line("START", 0), Line("MILK 1.00", 1), Line("SODA 2.00", 500)])
    (txn,) = ended(events)
    assert (txn.reason, len(txn.items)) == ("idle_timeout", 1)


def test_interrupt_ends_the_open_transaction_with_its_reason() -> None:
    """A device gone or EOF ends the open transaction as incomplete; nothing open, nothing."""
    engine = TransactionEngine(make_dialect())
    engine.feed(lines("START", "MILK 1.00"))
    (event,) = engine.interrupt(5, "disconnect")
    assert isinstance(event, TransactionEnded)
    assert (event.txn.status, event.txn.reason, event.ts) == ("incomplete", "disconnect", 5)
    assert engine.interrupt(6, "disconnect") == []


# --- events --------------------------------------------------------------------------------


def test_every_change_emits_a_basket_changed_snapshot() -> None:
    """Each change emits TransactionChanged; earlier snapshots do not move with the basket."""
    events, _ = run(
        lines("START", "MILK 1.00", "   2 @ 0.50", "VOID", "DISC X 0.10", "MEMBER 99", "TOTAL 0")
    )
    changes = [e.change for e in events if isinstance(e, TransactionChanged)]
    assert changes == ["started", "item", "item", "void", "discount", "loyalty", "total"]
    assert events[1].txn.items[0].quantity == "1"  # as it stood before the quantity line
    assert events[3].txn.items == []


def test_snapshot_is_a_deep_copy() -> None:
    """Mutating a snapshot leaves the original alone."""
    txn = one("MILK 1.00")
    copy = txn.snapshot()
    copy.items[0].amount = "9.99"
    copy.items.append(copy.items[0])
    assert (len(txn.items), txn.items[0].amount) == (1, "1.00")


def test_the_transaction_object_has_exactly_the_contract_fields() -> None:
    """The transaction object is docs/contracts.md section 1: unit only when known, voids and
    discounts trimmed."""
    texts = lines(
        "START #0042",
        "GOUDA 2,49",
        "   1,10 lb @ 0,59",
        "SODA 1,99",
        "VOID SODA",
        "DISC MEMBER 0,50",
        "MEMBER 9900011122233",
        "TOTAL 1,99",
        "END",
    )
    (txn,) = ended(run(texts, make_dialect(decimal=","))[0])
    assert contract(txn) == {
        "v": 1,
        "status": "complete",
        "transaction": "0042",
        "items": [
            {
                "code": None,
                "description": "GOUDA",
                "quantity": "1.10",
                "unit": "lb",
                "amount": "2.49",
            }
        ],
        "voids": [{"code": None, "description": "SODA", "amount": "-1.99"}],
        "discounts": [{"description": "MEMBER", "amount": "-0.50"}],
        "loyalty": "9900011122233",
        "total": "1.99",
        "totals_match": True,
    }


def test_items_per_transaction_are_capped_and_counted() -> None:
    """Past max_items, lines are dropped and counted, and the totals become unknown."""
    d = make_dialect(max_items=3)
    events, engine = run(lines("START", *(f"ITEM {i} 1.00" for i in range(5)), "TOTAL 5"), d)
    events += engine.interrupt(1, "eof")
    (txn,) = ended(events)
    assert (len(txn.items), txn.dropped, txn.totals_match) == (3, 2, None)
    assert engine.stats()["dropped_lines"] == 2


def test_overlong_line_is_cut_and_counted() -> None:
    """A line longer than MAX_LINE_CHARS is cut before any regex sees it."""
    _, engine = run(lines("START", "X" * (MAX_LINE_CHARS * 3)))
    assert engine.stats()["truncated_lines"] == 1


def test_stats_hold_counts_only() -> None:
    """stats() is numbers and a flag: nothing printed on a receipt."""
    _, engine = run(lines("START", "MILK 1.00", "MEMBER 9900011122233", "VISA TEND 1.00"))

    def leaves(value: Any) -> Iterable[Any]:
        if isinstance(value, dict):
            for v in value.values():
                yield from leaves(v)
        else:
            yield value

    assert all(isinstance(v, int) for v in leaves(engine.stats()))
    assert "9900011122233" not in repr(engine.stats())


# --- privacy: ignore, tender, redaction, PAN guard -------------------------------------------


def test_ignore_drops_a_line_before_anything_else() -> None:
    """An ignored line never becomes an item, even when it looks like one."""
    txn = one("NOISE 1.00", "MILK 1.00")
    assert [i.description for i in txn.items] == ["MILK"]


def test_redact_masks_spans_before_patterns_see_the_line() -> None:
    """Redacted spans become '*' before any pattern: the name is in no event."""
    events, engine = run(lines("START", "CASHIER MARIA 0.00", "END"))
    assert "MARIA" not in repr(events)
    assert ended(events)[0].items[0].description == "CASHIER *****"
    assert engine.stats()["redactions"] == 1


def test_tender_lines_leave_no_card_digits_anywhere() -> None:
    """Tender lines are dropped whole: no field, event or stat holds a digit of the card."""
    pan = "4111111111111111"
    events, engine = run(
        lines(
            "START",
            "MILK 1.00",
            f"VISA TEND {pan} 1.00",
            f"ACCOUNT # {pan[:4]} {pan[4:8]} {pan[8:12]} {pan[12:]}",
            f"V1S4{pan} TEND",
            "END",
        )
    )
    text = repr(events) + repr(engine.stats()) + json.dumps([contract(t) for t in ended(events)])
    assert pan not in text and pan[-4:] not in text and pan[:6] not in text
    (txn,) = ended(events)
    changes = [e.change for e in events if isinstance(e, TransactionChanged)]
    assert changes.count("tender") == 3  # what survives of a tender line: that it was seen
    assert txn.tender_types == ["VISA", "V S"]
    assert engine.stats()["matched"]["tender"] == 3


def test_pan_guard_masks_a_card_number_the_dialect_missed() -> None:
    """A Luhn-valid card number on a line no tender pattern caught is masked anyway."""
    events, engine = run(lines("START", "REF 4111 1111 1111 1111 0.00", "END"))
    assert "4111" not in repr(events)
    assert engine.stats()["pan_redactions"] == 1


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("4111111111111111", "****************"),
        ("PAN 5555-5555-5555-4444 ok", "PAN ******************* ok"),
        ("card 4111 1111 1111 1111 4.98", "card ******************* 4.98"),
        ("0000000123457 OAT MILK", "0000000123457 OAT MILK"),  # EAN-13: too short
        ("MEMBER 9900011122233445", "MEMBER 9900011122233445"),  # 9: not a payment card
        ("4111111111111112", "4111111111111112"),  # fails Luhn
        ("2025-03-14 09:12:01 L03", "2025-03-14 09:12:01 L03"),
    ],
)
def test_mask_pans(text: str, masked: str) -> None:
    """Only 15-19 digit, Luhn-valid numbers that start like a payment card are masked."""
    assert mask_pans(text)[0] == masked


def test_pan_guard_can_be_turned_off() -> None:
    """pan_guard = false leaves card-like numbers to the dialect's own patterns."""
    txn = one("GIFT CARD 4111111111111111 25.00", dialect=make_dialect(pan_guard=False))
    assert txn.items[0].description == "GIFT CARD 4111111111111111"


# --- the dialect file ----------------------------------------------------------------------


def test_minimal_dialect_gets_defaults() -> None:
    """Only name, a start marker and an end are required; the rest has documented defaults."""
    d = parse_dialect({"name": "x", "markers": {"start": ["S"]}, "end_on_cut": True})
    assert (d.encoding, d.escpos, d.decimal, d.idle_timeout_s, d.max_items) == (
        "cp437",
        True,
        ".",
        300.0,
        1000,
    )


DELETE = object()


def changed(doc: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """doc with the dotted key set to value (or removed, for DELETE)."""
    *parents, last = key.split(".")
    target = doc
    for part in parents:
        target = target[part]
    if value is DELETE:
        del target[last]
    else:
        target[last] = value
    return doc


@pytest.mark.parametrize(
    ("key", "value", "path", "words"),
    [
        ("patterns.item", ["(?P<amount>[0-9"], "patterns.item.0", "bad regex"),
        ("patterns.itme", [], "patterns.itme", "unknown key"),
        ("colour", "red", "colour", "unknown key"),
        ("patterns.total", [r"TOTAL (\S+)"], "patterns.total.0", "(?P<total>...)"),
        ("patterns.item", ["x", r"(?P<price>\d+)"], "patterns.item.1", "(?P<amount>...)"),
        ("patterns.tax", [r"TAX (?P<amount>\S+) (?P<rate>\S+)"], "patterns.tax.0", "rate"),
        ("patterns.ignore", ["x*"], "patterns.ignore.0", "empty line"),
        ("encoding", "klingon", "encoding", "unknown encoding"),
        ("encoding", "base64", "encoding", "unknown encoding"),
        ("end_on_cut", "yes", "end_on_cut", "boolean"),
        ("idle_timeout_s", "60", "idle_timeout_s", "number"),
        ("idle_timeout_s", 0, "idle_timeout_s", "greater than 0"),
        ("decimal", ";", "decimal", "'.' or ','"),
        ("name", "has space", "name", "pattern"),
        ("markers.start", [], "markers.start", "at least 1"),
        ("markers.start", DELETE, "markers.start", "required key is missing"),
        ("modifiers", {"weight": "below"}, "modifiers.weight", "'before' or 'after'"),
        ("patterns.item", "x (?P<amount>1)", "patterns.item", "tuple"),
    ],
)
def test_bad_dialect_reports_a_dotted_path(key: str, value: Any, path: str, words: str) -> None:
    """Each mistake in a dialect is reported at its dotted path with a useful message."""
    problems = problems_of(changed(dialect_doc(), key, value))
    assert any(p == path and words in msg for p, msg in problems), problems


def test_no_end_and_no_end_on_cut_is_an_error() -> None:
    """A dialect must be able to end a transaction some way other than a timeout."""
    doc = dialect_doc(end_on_cut=False)
    doc["markers"] = {"start": ["START"]}
    assert problems_of(doc) == [
        ("markers.end", "give at least one end marker or set end_on_cut = true")
    ]


def test_every_problem_is_reported_at_once() -> None:
    """Two mistakes give two problems, and str() names the source and both paths."""
    doc = dialect_doc(encoding="nope", colour="red")
    with pytest.raises(DialectError) as info:
        parse_dialect(doc, source="lane3.toml")
    assert {p for p, _ in info.value.problems} == {"encoding", "colour"}
    assert str(info.value).startswith("lane3.toml: ")
    assert "encoding: unknown encoding" in str(info.value)


def test_load_dialect_reports_unreadable_and_malformed_files(tmp_path: Path) -> None:
    """A missing file and a TOML syntax error are DialectErrors naming the file."""
    with pytest.raises(DialectError, match="cannot read"):
        load_dialect(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nmarkers = [\n')
    with pytest.raises(DialectError, match="TOML syntax error") as info:
        load_dialect(bad)
    assert info.value.problems[0][0] == str(bad)


def test_every_dialect_key_is_documented() -> None:
    """Each dotted dialect key appears in backticks in docs/pos-dialects.md."""
    text = DOCS.read_text(encoding="utf-8")
    keys = []
    for name, field in DialectFile.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and hasattr(sub, "model_fields"):
            keys += [f"{name}.{k}" for k in sub.model_fields]
        else:
            keys.append(name)
    assert len(keys) > 25
    assert [k for k in keys if f"`{k}`" not in text] == []


# --- the shipped dialects and captures ---------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_dialect_loads(name: str) -> None:
    """Each shipped dialect is valid and named after its file."""
    assert shipped(name).name == name


@pytest.mark.parametrize("name", SHIPPED)
def test_capture_files_are_what_the_generator_makes(name: str) -> None:
    """The committed .bin and .expected.json are exactly what make_captures.py writes."""
    module = generator()
    data, receipts = module.CAPTURES[name]()
    assert data == capture(name)
    assert [module.planted(r) for r in receipts] == expected(name)


@pytest.mark.parametrize("name", SHIPPED)
def test_capture_replays_to_what_was_planted(name: str) -> None:
    """The shipped dialect extracts from its capture exactly the planted transactions."""
    got = [contract(t) for t in replay(shipped(name), capture(name))]
    assert got == expected(name)


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_capture_replays_the_same_in_small_chunks(name: str, seed: int) -> None:
    """Bytes arriving 1-7 at a time give the same transactions as one read."""
    rng = random.Random(seed)
    sizes = (rng.randint(1, 7) for _ in itertools.count())
    got = [contract(t) for t in replay(shipped(name), capture(name), chunk_sizes=sizes)]
    assert got == expected(name)


def test_captures_cover_what_the_tests_rely_on() -> None:
    """Between them the captures plant voids, discounts, loyalty ids, card PANs and a cancel."""
    planted = [t for name in SHIPPED for t in expected(name)]
    assert all(4 <= len(expected(name)) <= 6 for name in SHIPPED)
    assert any(t["voids"] for t in planted)
    assert any(t["discounts"] for t in planted)
    assert any(t["loyalty"] for t in planted)
    assert any(i.get("unit") == "kg" for t in planted for i in t["items"])
    assert any(t["status"] == "cancelled" for t in expected("journal-dvr"))
    assert any(t["status"] == "incomplete" for t in planted)
    for name in SHIPPED:
        assert any(form.encode() in capture(name) for form in _pan_forms()), name


@pytest.mark.parametrize("name", SHIPPED)
def test_capture_card_numbers_reach_no_event_and_no_stat(name: str) -> None:
    """The test PANs planted in each capture appear in no event, snapshot or stat."""
    parser = DialectParser(shipped(name))
    events: list[PosEvent] = []
    data = capture(name)
    for i in range(0, len(data), 64):
        events += parser.feed(data[i : i + 64], float(i))
    events += parser.interrupt(float(len(data)), "eof")
    text = repr(events) + repr(parser.stats()) + json.dumps([contract(e.txn) for e in events])
    assert [form for form in _pan_forms() if form in text] == []


def _pan_forms() -> list[str]:
    """Each test PAN as printed: in one run, and in groups of four."""
    forms = list(TEST_PANS)
    forms += [" ".join(pan[i : i + 4] for i in range(0, 16, 4)) for pan in TEST_PANS]
    return forms


@pytest.mark.parametrize("name", SHIPPED)
def test_capture_ends_every_receipt_by_itself(name: str) -> None:
    """A live lane sees every planted receipt end without waiting for a timeout or EOF."""
    events = DialectParser(shipped(name)).feed(capture(name), 0.0)
    assert len(ended(events)) == len(expected(name))


def test_parser_counts_and_stats() -> None:
    """DialectParser reports the tokenizer's byte counts and both stages' stats."""
    parser = DialectParser(shipped("journal-dvr"))
    parser.feed(capture("journal-dvr"), 0.0)
    printable, odd, line_feeds = parser.counts()
    assert printable > 1000 and odd == 0 and line_feeds == capture("journal-dvr").count(b"\n")
    assert set(parser.stats()) == {"tokenizer", "engine"}
    assert parser.stats()["engine"]["transactions"]["cancelled"] == 1


def test_parser_interrupt_flushes_the_partial_line_first() -> None:
    """On interrupt the unterminated last line still counts, then the transaction ends."""
    parser = DialectParser(make_dialect())
    parser.feed(b"START\nMILK 1.00\nSODA 2.00", 1.0)
    events = parser.interrupt(2.0, "disconnect")
    (txn,) = ended(events)
    assert ([i.description for i in txn.items], txn.reason) == (["MILK", "SODA"], "disconnect")


def test_replay_ends_an_open_transaction_at_eof() -> None:
    """replay() interrupts with eof, so a receipt without its end is incomplete."""
    (txn,) = replay(make_dialect(), b"START\nMILK 1.00\n")
    assert (txn.status, txn.reason) == ("incomplete", "eof")


# --- fuzzing -----------------------------------------------------------------------------------


def _sample_lines() -> list[str]:
    """Real lines from the captures, to steer random input into every handler."""
    out: list[str] = []
    for name in SHIPPED:
        out += capture(name).decode("latin-1").replace("\r", "").split("\n")
    return [line for line in out if line.isprintable()][:400]


_DIALECTS = {name: shipped(name) for name in SHIPPED}
_SAMPLES = _sample_lines()
_TS = st.floats(min_value=0, max_value=10_000, allow_nan=False)
_TEXT = st.one_of(st.sampled_from(_SAMPLES), st.text(max_size=80))
_TOKENS = st.lists(
    st.one_of(
        st.builds(Line, _TEXT, _TS),
        st.builds(Barcode, st.text(max_size=30), _TS),
        st.builds(Cut, _TS),
        st.builds(Reset, _TS),
    ),
    max_size=60,
)


@pytest.mark.parametrize("name", SHIPPED)
@settings(max_examples=60, deadline=None)
@given(tokens=_TOKENS, now=_TS)
def test_engine_survives_any_token_sequence(name: str, tokens: list[Token], now: float) -> None:
    """No token sequence makes feed, tick or interrupt raise; baskets stay bounded."""
    d = _DIALECTS[name]
    engine = TransactionEngine(d)
    events = engine.feed(tokens) + engine.tick(now) + engine.interrupt(now, "eof")
    assert all(len(e.txn.items) <= d.max_items for e in events)
    assert engine.stats()["open"] is False


@pytest.mark.parametrize("name", SHIPPED)
@settings(max_examples=60, deadline=None)
@given(chunks=st.lists(st.binary(max_size=64), max_size=20), cut=st.integers(0, 4000))
def test_parser_survives_any_bytes(name: str, chunks: list[bytes], cut: int) -> None:
    """Arbitrary bytes, alone or spliced into a real capture, never make the parser raise."""
    parser = DialectParser(_DIALECTS[name])
    data = capture(name)
    parser.feed(data[:cut], 0.0)
    for i, chunk in enumerate(chunks):
        parser.feed(chunk, float(i))
    parser.feed(data[cut:], 30.0)
    parser.tick(1000.0)
    parser.interrupt(1001.0, "disconnect")
    assert parser.stats()["engine"]["open"] is False


def test_max_items_bound_holds_on_a_flood() -> None:
    """A lane printing item lines forever keeps at most max_items per transaction."""
    d = make_dialect(max_items=50)
    engine = TransactionEngine(d)
    events = engine.feed([Line("START", 0), *(Line(f"ITEM{i} 1.00", 0) for i in range(500))])
    assert max(len(e.txn.items) for e in events) == 50
