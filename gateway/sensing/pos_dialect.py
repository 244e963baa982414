"""POS dialects: turn one checkout lane's receipt tokens into live baskets and transactions.

A *dialect* is a declarative TOML file (``firmware_configs/pos/*.toml``, documented
for store IT in ``docs/pos-dialects.md``) saying how one vendor's POS prints:
which lines start, end and cancel a transaction, and which regular expressions
pick out the transaction number, items, quantity and weight lines, voids,
discounts, the loyalty number, subtotal, tax and total. ``load_dialect`` validates
it with strict models and reports every problem as ``dotted.path: message``.

``TransactionEngine`` applies a dialect to tokens (``gateway.sensing.escpos``:
``Line``, ``Cut``, ``Reset``, ``Barcode``) and emits ``TransactionChanged`` on every
change to the open basket and ``TransactionEnded`` once per transaction.
``DialectParser`` puts the tokenizer in front of it for one lane.

Matching order for a printed line (first match wins, see ``_CONTENT_KINDS``):

1. ``patterns.ignore``: the line is dropped.
2. ``patterns.tender``: the line is dropped; only "a tender was seen" (and the
   optional ``type`` group with its digits removed) survives. Card lines must be
   caught here, before anything else looks at them.
3. the PAN guard (``pan_guard``, on by default): runs of 15-19 digits that pass
   the Luhn check and start like a payment card (2-6) become ``*``.
4. ``patterns.redact``: each matched span becomes ``*``, one per character.
5. markers: ``start``, then ``cancel``, then ``end``. Marker lines are consumed.
6. outside a transaction nothing else is looked at.
7. content patterns: transaction, void, discount, loyalty, subtotal, tax, total,
   quantity, weight, item.

Privacy: tender lines and card digits never reach a field, an event or the
stats; the raw loyalty number lives only inside ``Transaction`` (the caller
hashes it before anything is stored or leaves the lane stage); ``stats`` holds
counts only.

Pure: no asyncio and no I/O except ``load_dialect`` reading its file; time is a
parameter (every token carries its own ``ts``).
"""

from __future__ import annotations

import copy
import re
import tomllib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from gateway.errors import DialectError
from gateway.sensing.escpos import Barcode, Cut, EscPosTokenizer, Line, Reset, Token

# --- limits (each bounds memory or time for any input) -----------------------------

# Receipts are 32-64 columns and journal lines rarely pass 200 characters; anything
# longer is line noise (a wrong baud rate, a binary blob) and is cut so that no
# dialect regex ever runs over an unbounded string. The tokenizer drops lines past
# the same length (EscPosTokenizer max_line); this guards tokens from anywhere else.
MAX_LINE_CHARS = 512
# A real basket has a few hundred lines at most; 1,000 bounds memory per lane while
# leaving room for a pallet-sized trade sale. A dialect may lower or raise it.
DEFAULT_MAX_ITEMS = 1000
MAX_ITEMS_LIMIT = 10_000
# Several tender lines per receipt are normal (split payment, change); more is noise.
MAX_TENDER_TYPES = 8
MAX_TENDER_TYPE_CHARS = 32
# A price check or a manager override can stall a lane for minutes; five minutes of
# silence in the middle of a receipt means the feed stopped, not the cashier.
DEFAULT_IDLE_TIMEOUT_S = 300.0
# Money and quantities: 15 integer digits and 6 decimals are far beyond any till, and
# keep every sum of up to MAX_ITEMS_LIMIT amounts exact in Decimal's 28 digits.
_NUMBER = re.compile(r"[0-9]{0,15}(?:\.[0-9]{1,6})?")

STATUSES = ("open", "complete", "cancelled", "incomplete")
CHANGES = (
    "started",
    "transaction",
    "item",
    "void",
    "discount",
    "loyalty",
    "subtotal",
    "tax",
    "total",
    "tender",
)

# --- the dialect file's schema --------------------------------------------------------


def _regex_check(required: tuple[str, ...], optional: tuple[str, ...] = ()) -> Callable[[str], str]:
    """A validator: the string compiles, has the required named groups and no others."""
    allowed = set(required) | set(optional)

    def check(value: str) -> str:
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise ValueError(f"bad regex: {exc}") from None
        groups = set(compiled.groupindex)
        missing = [g for g in required if g not in groups]
        if missing:
            raise ValueError("needs the named group " + ", ".join(f"(?P<{g}>...)" for g in missing))
        unknown = sorted(groups - allowed)
        if unknown:
            known = ", ".join(sorted(allowed)) or "none"
            raise ValueError(f"unknown named group {', '.join(unknown)} (allowed here: {known})")
        if compiled.search("") is not None:
            raise ValueError("matches an empty line, so it would match every line")
        return value

    return check


def _each(required: tuple[str, ...] = (), optional: tuple[str, ...] = ()) -> AfterValidator:
    """The validator of one regex in a list (see ``_regex_check``)."""
    return AfterValidator(_regex_check(required, optional))


def _encoding_check(value: str) -> str:
    try:
        # Both directions: "base64" and "rot13" are codecs but not text encodings.
        b"".decode(value)
        "".encode(value)
    except LookupError:
        raise ValueError(
            f"unknown encoding {value!r} (a Python codec: cp437, cp858, utf-8, ...)"
        ) from None
    return value


_ITEM_GROUPS = ("code", "description", "quantity", "unit", "amount")
_MODIFIER_OPTIONAL = ("unit", "unit_price")


# Lists of regexes in TOML (arrays of strings), each string checked on its own, one alias
# per set of named groups. Aliases rather than a function returning the type: a type
# checker reads no call in an annotation, while Annotated's metadata may be any value.
# strict=False: TOML arrays arrive as lists (the strings inside stay strict).
_MarkerRegexes = Annotated[
    tuple[Annotated[str, _each(optional=("transaction",))], ...], Field(strict=False)
]
_TransactionRegexes = Annotated[
    tuple[Annotated[str, _each(("transaction",))], ...], Field(strict=False)
]
_ItemRegexes = Annotated[
    tuple[Annotated[str, _each(("amount",), _ITEM_GROUPS)], ...], Field(strict=False)
]
_ModifierRegexes = Annotated[
    tuple[Annotated[str, _each(("quantity",), _MODIFIER_OPTIONAL)], ...], Field(strict=False)
]
_VoidRegexes = Annotated[
    tuple[Annotated[str, _each((), ("code", "description", "amount"))], ...],
    Field(strict=False),
]
_DiscountRegexes = Annotated[
    tuple[Annotated[str, _each(("amount",), ("description",))], ...], Field(strict=False)
]
_LoyaltyRegexes = Annotated[tuple[Annotated[str, _each(("loyalty",))], ...], Field(strict=False)]
_SubtotalRegexes = Annotated[
    tuple[Annotated[str, _each((), ("amount",))], ...], Field(strict=False)
]
_TaxRegexes = Annotated[tuple[Annotated[str, _each(("amount",))], ...], Field(strict=False)]
_TotalRegexes = Annotated[tuple[Annotated[str, _each(("total",))], ...], Field(strict=False)]
_TenderRegexes = Annotated[tuple[Annotated[str, _each((), ("type",))], ...], Field(strict=False)]
_PlainRegexes = Annotated[tuple[Annotated[str, _each()], ...], Field(strict=False)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


class MarkersSection(_Model):
    """Lines that start, end and cancel a transaction; each may name its number."""

    start: Annotated[_MarkerRegexes, Field(min_length=1)]
    end: _MarkerRegexes = ()
    cancel: _MarkerRegexes = ()


class PatternsSection(_Model):
    """The content of a receipt: one list of regexes per kind of line."""

    transaction: _TransactionRegexes = ()
    barcode: _TransactionRegexes = ()
    item: _ItemRegexes = ()
    quantity: _ModifierRegexes = ()
    weight: _ModifierRegexes = ()
    void: _VoidRegexes = ()
    discount: _DiscountRegexes = ()
    loyalty: _LoyaltyRegexes = ()
    subtotal: _SubtotalRegexes = ()
    tax: _TaxRegexes = ()
    total: _TotalRegexes = ()
    tender: _TenderRegexes = ()
    ignore: _PlainRegexes = ()
    redact: _PlainRegexes = ()


class ModifiersSection(_Model):
    """Where quantity and weight lines sit relative to the item they belong to."""

    quantity: Literal["before", "after"] = "after"
    weight: Literal["before", "after"] = "after"


class DialectFile(_Model):
    """The whole dialect file."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    description: str = ""
    encoding: Annotated[str, AfterValidator(_encoding_check)] = "cp437"
    escpos: bool = True
    decimal: Literal[".", ","] = "."
    idle_timeout_s: Annotated[float, Field(gt=0, le=86_400)] = DEFAULT_IDLE_TIMEOUT_S
    end_on_cut: bool = False
    max_items: Annotated[int, Field(ge=1, le=MAX_ITEMS_LIMIT)] = DEFAULT_MAX_ITEMS
    tax_included: bool = False
    pan_guard: bool = True
    markers: MarkersSection
    patterns: PatternsSection = PatternsSection()
    modifiers: ModifiersSection = ModifiersSection()


# --- the compiled dialect -------------------------------------------------------------

Regexes = tuple[re.Pattern[str], ...]


@dataclass(frozen=True)
class Markers:
    start: Regexes
    end: Regexes
    cancel: Regexes


@dataclass(frozen=True)
class Patterns:
    transaction: Regexes = ()
    barcode: Regexes = ()
    item: Regexes = ()
    quantity: Regexes = ()
    weight: Regexes = ()
    void: Regexes = ()
    discount: Regexes = ()
    loyalty: Regexes = ()
    subtotal: Regexes = ()
    tax: Regexes = ()
    total: Regexes = ()
    tender: Regexes = ()
    ignore: Regexes = ()
    redact: Regexes = ()


@dataclass(frozen=True)
class Dialect:
    """A validated dialect with its regexes compiled."""

    name: str
    encoding: str
    escpos: bool
    idle_timeout_s: float
    end_on_cut: bool
    markers: Markers
    patterns: Patterns
    description: str = ""
    decimal: str = "."
    max_items: int = DEFAULT_MAX_ITEMS
    tax_included: bool = False
    pan_guard: bool = True
    quantity_position: str = "after"
    weight_position: str = "after"
    source: str = "<dialect>"

    def tokenizer(self) -> EscPosTokenizer:
        """A fresh tokenizer for this dialect's code page and framing."""
        return EscPosTokenizer(self.encoding, escpos=self.escpos)


def _compile(patterns: tuple[str, ...]) -> Regexes:
    return tuple(re.compile(p) for p in patterns)


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def _message(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key (check the spelling; see docs/pos-dialects.md)"
    if err["type"] == "missing":
        return "required key is missing"
    if err["type"] == "value_error" and "error" in err.get("ctx", {}):
        return str(err["ctx"]["error"])
    return str(err["msg"])


def parse_dialect(doc: dict[str, Any], source: str = "<dialect>") -> Dialect:
    """Validate an already-parsed dialect document; raise DialectError listing every problem."""
    try:
        raw = DialectFile.model_validate(doc)
    except ValidationError as exc:
        problems = [(_loc(e["loc"]), _message(e)) for e in exc.errors(include_url=False)]
        raise DialectError(problems, source) from None
    if not raw.markers.end and not raw.end_on_cut:
        raise DialectError(
            [("markers.end", "give at least one end marker or set end_on_cut = true")], source
        )
    p = raw.patterns
    return Dialect(
        name=raw.name,
        description=raw.description,
        encoding=raw.encoding,
        escpos=raw.escpos,
        decimal=raw.decimal,
        idle_timeout_s=float(raw.idle_timeout_s),
        end_on_cut=raw.end_on_cut,
        max_items=raw.max_items,
        tax_included=raw.tax_included,
        pan_guard=raw.pan_guard,
        quantity_position=raw.modifiers.quantity,
        weight_position=raw.modifiers.weight,
        source=source,
        markers=Markers(
            start=_compile(raw.markers.start),
            end=_compile(raw.markers.end),
            cancel=_compile(raw.markers.cancel),
        ),
        patterns=Patterns(
            **{name: _compile(getattr(p, name)) for name in PatternsSection.model_fields}
        ),
    )


def load_dialect(path: str | Path) -> Dialect:
    """Read and validate a dialect file; raise DialectError with every problem found."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise DialectError([(source, f"cannot read: {exc.strerror}")], source) from exc
    except UnicodeDecodeError as exc:
        raise DialectError([(source, f"not UTF-8 text: {exc.reason}")], source) from exc
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DialectError([(source, f"TOML syntax error: {exc}")], source) from exc
    return parse_dialect(doc, source)


# --- values as printed ------------------------------------------------------------------


def normalise_number(raw: str | None, decimal: str = ".") -> str | None:
    """A printed amount or quantity as a decimal string; None when it is not a number.

    The decimal comma becomes a point and the other separator (thousands) goes;
    currency signs and letters around the digits go; a trailing minus ("1.99-") and
    parentheses ("(1.99)") become a leading minus. Digits are kept as printed
    ("4.90" stays "4.90"), except that a bare ".99" gains its "0".
    """
    if raw is None:
        return None
    s = re.sub(r"[^0-9.,()+\-]", "", raw)
    negative = False
    if s.startswith("(") and s.endswith(")"):
        negative, s = True, s[1:-1]
    if s.endswith("-"):
        negative, s = True, s[:-1]
    elif s.startswith("-"):
        negative, s = True, s[1:]
    elif s.startswith("+"):
        s = s[1:]
    thousands = "," if decimal == "." else "."
    s = s.replace(thousands, "").replace("'", "")
    if decimal == ",":
        s = s.replace(",", ".")
    if not s or s == "." or not _NUMBER.fullmatch(s):
        return None
    if s.startswith("."):
        s = "0" + s
    return "-" + s if negative else s


def _negative(amount: str | None) -> str | None:
    """Void and discount amounts are always negative, whichever way the POS prints them."""
    if amount is None or amount.startswith("-") or Decimal(amount) == 0:
        return amount
    return "-" + amount


def _text(raw: str | None) -> str | None:
    """A code or description: whitespace runs collapsed, empty becomes None."""
    if raw is None:
        return None
    s = " ".join(raw.split())
    return s or None


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# A run of ASCII digit groups joined by single spaces or dashes ("4111 1111 1111 1111").
_DIGIT_RUN = re.compile(r"[0-9]+(?:[ -][0-9]+)*")
_DIGIT_GROUP = re.compile(r"[0-9]+")
# ISO/IEC 7812: payment cards are 15-19 digits; major industry identifiers 2-6 are
# cards (Mastercard 2-series, Amex 3, Visa 4, Mastercard 5, Discover/Maestro 6), while
# loyalty schemes mostly use 9 ("national use") and EAN-13 codes are 13 digits long.
_PAN_MIN, _PAN_MAX = 15, 19
_PAN_FIRST = "23456"
_PAN_CANDIDATE = re.compile(r"[2-6](?:[ -]?[0-9]){14}")


def mask_pans(text: str) -> tuple[str, int]:
    """Replace what looks like a payment card number with ``*``; return (text, count)."""
    # Most lines hold no 15 digits in a row (spaces and dashes allowed): one C-level
    # search rules them out (a looser test than the one below, so nothing is missed).
    if _PAN_CANDIDATE.search(text) is None:
        return text, 0
    spans: list[tuple[int, int]] = []
    for run in _DIGIT_RUN.finditer(text):
        groups = list(_DIGIT_GROUP.finditer(run.group()))
        i = 0
        while i < len(groups):
            found = None
            digits = ""
            for j in range(i, len(groups)):
                digits += groups[j].group()
                if len(digits) > _PAN_MAX:
                    break
                if len(digits) >= _PAN_MIN and digits[0] in _PAN_FIRST and _luhn(digits):
                    found = j
            if found is None:
                i += 1
                continue
            spans.append((run.start() + groups[i].start(), run.start() + groups[found].end()))
            i = found + 1
    if not spans:
        return text, 0
    chars = list(text)
    for start, end in spans:
        chars[start:end] = "*" * (end - start)
    return "".join(chars), len(spans)


# --- transactions -----------------------------------------------------------------------


@dataclass(slots=True)
class Item:
    """An item, void or discount line as printed (money and quantities normalised)."""

    code: str | None = None
    description: str | None = None
    quantity: str | None = None
    unit: str | None = None
    amount: str | None = None
    unit_price: str | None = None


@dataclass
class Transaction:
    """One receipt: open while it prints, then complete, cancelled or incomplete.

    ``reason`` says why it ended (``end_marker``, ``cut``, ``cancel_marker``,
    ``idle_timeout``, ``new_start`` or what ``interrupt`` was given, such as
    ``disconnect`` or ``eof``); it is None while open. ``loyalty`` is the raw number:
    the caller hashes it before anything is stored.
    """

    number: str | None = None
    status: str = "open"
    items: list[Item] = field(default_factory=list)
    voids: list[Item] = field(default_factory=list)
    discounts: list[Item] = field(default_factory=list)
    # repr=False: a transaction or event written to a log must not carry the number.
    loyalty: str | None = field(default=None, repr=False)
    total: str | None = None
    totals_match: bool | None = None
    reason: str | None = None
    taxes: list[str | None] = field(default_factory=list)
    tender_types: list[str] = field(default_factory=list)
    # Lines not kept because the transaction reached the dialect's max_items.
    dropped: int = 0

    def snapshot(self) -> Transaction:
        """A deep copy, safe to hand to another thread."""
        return copy.copy(self)._deepen()

    def _deepen(self) -> Transaction:
        # Every leaf is an immutable str/float/bool, so copying the lists and Items is
        # a deep copy, at a fraction of copy.deepcopy's cost on a 1,000-item basket.
        self.items = [_copy_item(i) for i in self.items]
        self.voids = [_copy_item(i) for i in self.voids]
        self.discounts = [_copy_item(i) for i in self.discounts]
        self.taxes = list(self.taxes)
        self.tender_types = list(self.tender_types)
        return self


def _copy_item(i: Item) -> Item:
    # Positional construction: a third of copy.copy's cost, on every basket change.
    return Item(i.code, i.description, i.quantity, i.unit, i.amount, i.unit_price)


def totals_match(txn: Transaction, tax_included: bool = False) -> bool | None:
    """sum(items) + sum(discounts) + sum(taxes) == total; None when anything is unknown."""
    if txn.total is None or txn.dropped:
        return None
    amounts = [i.amount for i in txn.items] + [d.amount for d in txn.discounts]
    if not tax_included:
        amounts += txn.taxes
    if any(a is None for a in amounts):
        return None
    return sum((Decimal(a) for a in amounts if a is not None), Decimal(0)) == Decimal(txn.total)


@dataclass(frozen=True)
class TransactionChanged:
    """The open basket changed (``change`` is one of ``CHANGES``); ``txn`` is a snapshot."""

    txn: Transaction
    change: str
    ts: float


@dataclass(frozen=True)
class TransactionEnded:
    """A transaction ended (complete, cancelled or incomplete); the engine keeps no reference."""

    txn: Transaction
    ts: float


PosEvent = TransactionChanged | TransactionEnded


@dataclass
class _Modifier:
    quantity: str | None
    unit: str | None
    unit_price: str | None


# Content kinds in matching order (first match wins). Why this order: voids and
# discounts usually look like items with a keyword, so they go before item; "SUBTOTAL"
# contains "TOTAL", so subtotal and tax go before total; a member discount line often
# names the loyalty scheme, so discount goes before loyalty; item is the catch-all.
_CONTENT_KINDS = (
    "transaction",
    "void",
    "discount",
    "loyalty",
    "subtotal",
    "tax",
    "total",
    "quantity",
    "weight",
    "item",
)


def _first(regexes: Regexes, text: str) -> re.Match[str] | None:
    for rx in regexes:
        m = rx.search(text)
        if m is not None:
            return m
    return None


def _stars(m: re.Match[str]) -> str:
    return "*" * len(m.group())


class TransactionEngine:
    """Tokens in, basket events out, for one lane. Never raises on any token sequence."""

    def __init__(self, dialect: Dialect) -> None:
        self._d = dialect
        self._txn: Transaction | None = None
        self._last_ts = 0.0
        # The item or void record an "after" quantity/weight line attaches to.
        self._last_line: Item | None = None
        # A "before" quantity/weight line waiting for its item.
        self._pending: _Modifier | None = None
        self._counts: Counter[str] = Counter()
        self._matched: Counter[str] = Counter()
        self._ended: Counter[str] = Counter()
        self._handlers: dict[str, Callable[[re.Match[str], float, list[PosEvent]], None]] = {
            "transaction": self._on_transaction,
            "void": self._on_void,
            "discount": self._on_discount,
            "loyalty": self._on_loyalty,
            "subtotal": self._on_subtotal,
            "tax": self._on_tax,
            "total": self._on_total,
            "quantity": self._on_quantity,
            "weight": self._on_weight,
            "item": self._on_item,
        }
        self._content = tuple(
            (kind, getattr(dialect.patterns, kind))
            for kind in _CONTENT_KINDS
            if getattr(dialect.patterns, kind)
        )

    # --- the port ---

    def feed(self, tokens: Iterable[Token]) -> list[PosEvent]:
        events: list[PosEvent] = []
        for token in tokens:
            self._token(token, events)
        return events

    def tick(self, now: float) -> list[PosEvent]:
        events: list[PosEvent] = []
        self._expire(now, events)
        return events

    def interrupt(self, ts: float, reason: str) -> list[PosEvent]:
        events: list[PosEvent] = []
        if self._txn is not None:
            self._end("incomplete", str(reason), ts, events)
        return events

    def stats(self) -> dict[str, Any]:
        return {
            **{k: self._counts[k] for k in _STAT_COUNTS},
            "matched": {k: self._matched[k] for k in _MATCH_KINDS},
            "transactions": {s: self._ended[s] for s in STATUSES[1:]},
            "open": self._txn is not None,
        }

    # --- tokens ---

    def _token(self, token: object, events: list[PosEvent]) -> None:
        match token:
            case Line(text=text, ts=ts) if isinstance(text, str):
                self._expire(ts, events)
                self._line(text, ts, events)
            case Barcode(data=data, ts=ts) if isinstance(data, str):
                self._expire(ts, events)
                self._barcode(data, ts, events)
            case Cut(ts=ts):
                self._expire(ts, events)
                self._counts["cuts"] += 1
                if self._txn is not None:
                    self._last_ts = ts
                    if self._d.end_on_cut:
                        self._end("complete", "cut", ts, events)
            case Reset(ts=ts):
                # ESC @ starts most receipts but POS software also sends it mid-receipt
                # (after a logo, before a coupon); the markers decide, not the reset.
                self._expire(ts, events)
                self._counts["resets"] += 1
                if self._txn is not None:
                    self._last_ts = ts
            case _:
                self._counts["unknown_tokens"] += 1

    def _expire(self, now: float, events: list[PosEvent]) -> None:
        if self._txn is not None and now - self._last_ts >= self._d.idle_timeout_s:
            # It ended when the printer fell silent, not when we noticed.
            self._end("incomplete", "idle_timeout", self._last_ts, events, event_ts=now)

    def _barcode(self, data: str, ts: float, events: list[PosEvent]) -> None:
        self._counts["barcodes"] += 1
        if self._txn is None:
            return
        self._last_ts = ts
        data = data[:MAX_LINE_CHARS]
        if self._d.pan_guard:
            data, n = mask_pans(data)
            self._counts["pan_redactions"] += n
        m = _first(self._d.patterns.barcode, data)
        if m is not None:
            self._matched["barcode"] += 1
            self._set_number(m.group("transaction"), ts, events)

    def _line(self, text: str, ts: float, events: list[PosEvent]) -> None:
        self._counts["lines"] += 1
        if self._txn is not None:
            self._last_ts = ts
        if len(text) > MAX_LINE_CHARS:
            self._counts["truncated_lines"] += 1
            text = text[:MAX_LINE_CHARS]
        # Trailing padding varies between firmware versions and means nothing; leading
        # spaces are kept because indentation often marks a quantity or weight line.
        text = text.rstrip()
        if not text:
            self._counts["blank"] += 1
            return
        d = self._d
        if _first(d.patterns.ignore, text) is not None:
            self._matched["ignore"] += 1
            return
        m = _first(d.patterns.tender, text)
        if m is not None:
            self._matched["tender"] += 1
            self._on_tender(m, ts, events)
            return
        if d.pan_guard:
            text, n = mask_pans(text)
            self._counts["pan_redactions"] += n
        for rx in d.patterns.redact:
            text, n = rx.subn(_stars, text)
            self._counts["redactions"] += n
        if self._markers(text, ts, events):
            return
        if self._txn is None:
            self._counts["outside"] += 1
            return
        for kind, regexes in self._content:
            m = _first(regexes, text)
            if m is not None:
                self._matched[kind] += 1
                if kind not in ("quantity", "weight", "item", "void"):
                    self._last_line = None
                self._handlers[kind](m, ts, events)
                return
        self._counts["unmatched"] += 1

    def _markers(self, text: str, ts: float, events: list[PosEvent]) -> bool:
        markers = self._d.markers
        m = _first(markers.start, text)
        if m is not None:
            self._matched["start"] += 1
            if self._txn is not None:
                self._end("incomplete", "new_start", ts, events)
            number = _text(m.group("transaction")) if "transaction" in m.re.groupindex else None
            self._txn = Transaction(number=number)
            self._last_ts = ts
            self._counts["started"] += 1
            self._changed("started", ts, events)
            return True
        if self._txn is None:
            return False
        for kind, regexes, status in (
            ("cancel", markers.cancel, "cancelled"),
            ("end", markers.end, "complete"),
        ):
            m = _first(regexes, text)
            if m is not None:
                self._matched[kind] += 1
                self._number_from(m, ts, events)
                self._end(status, f"{kind}_marker", ts, events)
                return True
        return False

    # --- content handlers ---

    def _number_from(self, m: re.Match[str], ts: float, events: list[PosEvent]) -> None:
        if "transaction" in m.re.groupindex:
            self._set_number(m.group("transaction"), ts, events)

    def _set_number(self, raw: str | None, ts: float, events: list[PosEvent]) -> None:
        txn = self._txn
        number = _text(raw)
        if txn is None or number is None:
            return
        if txn.number is None:
            txn.number = number
            self._changed("transaction", ts, events)
        elif txn.number != number:
            # The first number printed wins; a second one is counted, never merged.
            self._counts["number_conflicts"] += 1

    def _on_transaction(self, m: re.Match[str], ts: float, events: list[PosEvent]) -> None:
        self._set_number(m.group("transaction"), ts, events)

    def _money(self, m: re.Match[str], group: str) -> str | None:
        raw = m.groupdict().get(group)
        if raw is None:
            return None
        value = normalise_number(raw, self._d.decimal)
        if value is None:
            self._counts["bad_numbers"] += 1
        return value

    def _record(self, m: re.Match[str]) -> Item:
        g = m.groupdict()
        unit = _text(g.get("unit"))
        return Item(
            code=_text(g.get("code")),
            description=_text(g.get("description")),
            quantity=self._money(m, "quantity"),
            unit=unit.lower() if unit else None,
            amount=self._money(m, "amount"),
        )

    def _room(self, kept: list[Any]) -> bool:
        if len(kept) < self._d.max_items:
            return True
        assert self._txn is not None
        self._txn.dropped += 1
        self._counts["dropped_lines"] += 1
        self._last_line = None
        return False

    def _take_pending(self, record: Item) -> None:
        if self._pending is not None:
            self._apply(self._pending, record)
            self._pending = None

    def _on_item(self, m: re.Match[str], ts: float, events: list[PosEvent]) -> None:
        txn = self._txn
        assert txn is not None
        item = self._record(m)
        self._take_pending(item)
        if item.quantity is None:
            # One printed line with no count on it is one unit on every POS we know.
            item.quantity = "1"
        if not self._room(txn.items):
            return
        txn.items.append(item)
        self._last_line = item
        self._changed("item", ts, events)

    def _on_void(self, m: re.Match[str], ts: float, events: list[PosEvent]) -> None:
        txn = self._txn
        assert txn is not None
        void = self._record(m)
        void.amount = _negative(void.amount)
        self._take_pending(void)
        index = self._void_target(void)
        if index is None:
            self._counts["unmatched_voids"] += 1
        else:
            item = txn.items.pop(index)
            void.code = void.code or item.code
            void.description = void.description or item.description
            void.quantity = void.quantity or item.quantity
            void.unit = void.unit or item.unit
            void.amount = void.amount or _negative(item.amount)
        if not self._room(txn.voids):
            return
        txn.voids.append(void)
        self._last_line = void
        self._changed("void", ts, events)

    def _void_target(self, void: Item) -> int | None:
        """Which item a void takes back: by code, else description, else amount, else last.

        The amount is only used when the void names no code (a code that matches
        nothing means an item we never saw), and "the last item" only when the void
        line names nothing at all.
        """
        assert self._txn is not None
        items = self._txn.items

        def last(pred: Callable[[Item], bool]) -> int | None:
            for i in range(len(items) - 1, -1, -1):
                if pred(items[i]):
                    return i
            return None

        if void.code is not None:
            code = void.code.lstrip("0")
            found = last(lambda i: i.code is not None and i.code.lstrip("0") == code)
            if found is not None:
                return found
        if void.description is not None:
            key = void.description.casefold()
            found = last(lambda i: i.description is not None and i.description.casefold() == key)
            if found is not None:
                return found
        if void.code is None and void.amount is not None:
            amount = abs(Decimal(void.amount))
            return last(lambda i: i.amount is not None and abs(Decimal(i.amount)) == amount)
        if void.code is None and void.description is None and items:
            return len(items) - 1
        return None

    def _on_discount(self, m: re.Match[str], ts: float, events: list[PosEvent]) -> None:
        txn = self._txn
        assert txn is not None
        amount = _negative(self._money(m, "amount"))
        discount = Item(description=_text(m.groupdict().get("description")), amount=amount)
        if self._room(txn.discounts):
            txn.discounts.append(discount)
            self._changed("discount", ts, events)

    def _on_loyalty(self, m: re.Match[str], ts: float, events: list[PosEvent]) -> None:
        txn = self._txn
        assert txn is not None
        number = "".join((m.group("loyalty") or "").split())
        if number and number != txn.loyalty:
            txn.loyalty = number
            self._changed("loyalty", ts, events)

    def _on_subtotal(self, m: re.Match[str], ts: float, events: list[PosEvent]) -> None:
        assert self._txn is not None
        self._money(m, "amount")  # checked, so a bad number is counted; nothing keeps it
        self._changed("subtotal", ts, events)

    def _on_tax(self, m: re.Match[str], ts: float, events: list[PosEvent]) -> None:
        txn = self._txn
        assert txn is not None
        if self._room(txn.taxes):
            txn.taxes.append(self._money(m, "amount"))
            self._changed("tax", ts, events)

    def _on_total(self, m: re.Match[str], ts: float, events: list[PosEvent]) -> None:
        assert self._txn is not None
        self._txn.total = self._money(m, "total")
        self._changed("total", ts, events)

    def _on_tender(self, m: re.Match[str], ts: float, events: list[PosEvent]) -> None:
        txn = self._txn
        if txn is None:
            return
        # Only letters survive: a type group written too wide must not carry card digits.
        kind = " ".join(re.sub(r"[\W\d_]+", " ", m.groupdict().get("type") or "").split())
        kind = kind[:MAX_TENDER_TYPE_CHARS]
        if kind and len(txn.tender_types) < MAX_TENDER_TYPES:
            txn.tender_types.append(kind)
        self._changed("tender", ts, events)

    def _on_quantity(self, m: re.Match[str], ts: float, events: list[PosEvent]) -> None:
        self._modifier(m, self._d.quantity_position, ts, events)

    def _on_weight(self, m: re.Match[str], ts: float, events: list[PosEvent]) -> None:
        self._modifier(m, self._d.weight_position, ts, events)

    def _modifier(self, m: re.Match[str], position: str, ts: float, events: list[PosEvent]) -> None:
        unit = _text(m.groupdict().get("unit"))
        modifier = _Modifier(
            quantity=self._money(m, "quantity"),
            unit=unit.lower() if unit else None,
            unit_price=self._money(m, "unit_price"),
        )
        if position == "before":
            if self._pending is not None:
                self._counts["orphan_modifiers"] += 1
            self._pending = modifier
            return
        target = self._last_line
        if target is None:
            self._counts["orphan_modifiers"] += 1
            return
        self._apply(modifier, target)
        assert self._txn is not None
        is_void = any(v is target for v in self._txn.voids)
        self._changed("void" if is_void else "item", ts, events)

    @staticmethod
    def _apply(modifier: _Modifier, record: Item) -> None:
        # The quantity/weight line is the specific statement about this item: it wins.
        if modifier.quantity is not None:
            record.quantity = modifier.quantity
        if modifier.unit is not None:
            record.unit = modifier.unit
        if modifier.unit_price is not None:
            record.unit_price = modifier.unit_price

    # --- state changes ---

    def _changed(self, change: str, ts: float, events: list[PosEvent]) -> None:
        txn = self._txn
        assert txn is not None
        if txn.total is not None:
            txn.totals_match = totals_match(txn, self._d.tax_included)
        events.append(TransactionChanged(txn.snapshot(), change, ts))

    def _end(
        self,
        status: str,
        reason: str,
        ts: float,
        events: list[PosEvent],
        event_ts: float | None = None,
    ) -> None:
        txn = self._txn
        assert txn is not None
        txn.status = status
        txn.reason = reason
        txn.totals_match = totals_match(txn, self._d.tax_included)
        self._ended[status] += 1
        if txn.totals_match is False:
            self._counts["totals_mismatches"] += 1
        self._txn = None
        self._last_line = None
        self._pending = None
        events.append(TransactionEnded(txn, ts if event_ts is None else event_ts))


_STAT_COUNTS = (
    "lines",
    "blank",
    "outside",
    "unmatched",
    "truncated_lines",
    "barcodes",
    "cuts",
    "resets",
    "unknown_tokens",
    "started",
    "redactions",
    "pan_redactions",
    "bad_numbers",
    "unmatched_voids",
    "orphan_modifiers",
    "number_conflicts",
    "dropped_lines",
    "totals_mismatches",
)
_MATCH_KINDS = ("ignore", "tender", "start", "cancel", "end", "barcode", *_CONTENT_KINDS)


# --- one lane: tokenizer + engine -------------------------------------------------------


class DialectParser:
    """Bytes from one lane's serial feed in, POS events out (tokenizer, then engine).

    Not thread-safe: the serial adapter calls it from its one read thread. Events
    carry snapshots, so they may be handed to any other thread.
    """

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self._tokenizer = dialect.tokenizer()
        self._engine = TransactionEngine(dialect)

    @property
    def tokenizer(self) -> EscPosTokenizer:
        return self._tokenizer

    def feed(self, data: bytes, ts: float) -> list[PosEvent]:
        return self._engine.feed(self._tokenizer.feed(data, ts))

    def tick(self, now: float) -> list[PosEvent]:
        return self._engine.tick(now)

    def interrupt(self, ts: float, reason: str) -> list[PosEvent]:
        events = self._engine.feed(self._tokenizer.flush(ts))
        self._tokenizer.reset_state()
        return events + self._engine.interrupt(ts, reason)

    def counts(self) -> tuple[int, int, int]:
        t = self._tokenizer
        return (t.printable, t.high + t.garbage, t.line_feeds)

    def stats(self) -> dict[str, Any]:
        return {"tokenizer": self._tokenizer.stats(), "engine": self._engine.stats()}


def _chunks(data: bytes, sizes: Iterable[int] | None) -> Iterator[bytes]:
    if sizes is None:
        yield data
        return
    pos = 0
    for size in sizes:
        if pos >= len(data):
            return
        step = max(1, int(size))
        yield data[pos : pos + step]
        pos += step
    if pos < len(data):
        yield data[pos:]


def replay(
    dialect: Dialect, data: bytes, *, chunk_sizes: Iterable[int] | None = None
) -> list[Transaction]:
    """Every transaction a capture holds, in order, as the lane would have seen it.

    All bytes arrive at ts 0 (a capture has no timing), so idle timeouts never fire;
    at the end the feed is interrupted with reason ``eof``.
    """
    parser = DialectParser(dialect)
    events: list[PosEvent] = []
    for chunk in _chunks(data, chunk_sizes):
        events.extend(parser.feed(chunk, 0.0))
    events.extend(parser.interrupt(0.0, "eof"))
    return [e.txn for e in events if isinstance(e, TransactionEnded)]
