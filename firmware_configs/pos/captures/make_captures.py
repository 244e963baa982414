"""Build the sample POS captures and write down the transactions planted in them.

    python firmware_configs/pos/captures/make_captures.py

For each shipped dialect this writes ``<name>.bin`` (the bytes a passive tap on
the lane would record) and ``<name>.expected.json`` (the docs/contracts.md section 1
transaction objects planted in it, in order). The expected objects are derived
from the receipts below, never from running the gateway, so the tests compare
the dialect engine against an independent truth.

Standard library only; deterministic (same bytes on every run). The card numbers
are public test PANs (Luhn-valid, never issued): the point of planting them is
that the gateway must never let one through.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

HERE = Path(__file__).resolve().parent
CENT = Decimal("0.01")

VISA_TEST_PAN = "4111111111111111"
MASTERCARD_TEST_PAN = "5555555555554444"
VISA_DEBIT_TEST_PAN = "4000056655665556"


# --- what was sold: the source of truth for both the bytes and the expectations -------


@dataclass
class Sale:
    """One item line. ``quantity``/``unit`` come from a quantity or weight line."""

    code: str
    description: str
    amount: Decimal
    quantity: str | None = None  # "2" on a "2 @ 2.49" line, "1.10" on a weight line
    unit: str | None = None  # "lb", "kg": a weight line
    unit_price: Decimal | None = None
    tax_class: str = "F"


@dataclass
class Void:
    sale: Sale  # the earlier Sale this line takes back


@dataclass
class Discount:
    description: str
    amount: Decimal  # positive here; each POS prints it its own way


@dataclass
class Tender:
    kind: str  # "VISA", "MASTERCARD", "DEBIT", "CASH"
    card: str | None = None  # as the POS prints it: full or masked
    given: Decimal | None = None  # cash handed over


@dataclass
class Receipt:
    number: str | None
    lines: list[Sale | Void | Discount]
    tender: Tender
    time: str
    tax: Decimal = Decimal("0.00")
    loyalty: str | None = None
    # "complete", "cancelled" (the POS cancels it), or "cut_off" (the feed stops mid-receipt)
    ending: str = "complete"
    extra: dict[str, str] = field(default_factory=dict)

    def sales(self) -> list[Sale]:
        voided = {id(line.sale) for line in self.lines if isinstance(line, Void)}
        return [s for s in self.lines if isinstance(s, Sale) and id(s) not in voided]

    def discounts(self) -> list[Discount]:
        return [d for d in self.lines if isinstance(d, Discount)]

    def subtotal(self) -> Decimal:
        return sum((s.amount for s in self.sales()), Decimal(0)) - sum(
            (d.amount for d in self.discounts()), Decimal(0)
        )

    def total(self) -> Decimal:
        return self.subtotal() + self.tax


def planted(r: Receipt) -> dict[str, object]:
    """The transaction object (docs/contracts.md section 1) a correct dialect must extract."""
    items = []
    for s in r.sales():
        entry: dict[str, object] = {
            "code": s.code,
            "description": s.description,
            "quantity": s.quantity or "1",
        }
        if s.unit:
            entry["unit"] = s.unit
        entry["amount"] = money(s.amount)
        items.append(entry)
    complete = r.ending == "complete"
    return {
        "v": 1,
        "status": {"complete": "complete", "cancelled": "cancelled", "cut_off": "incomplete"}[
            r.ending
        ],
        "transaction": r.number,
        "items": items,
        "voids": [
            {
                "code": v.sale.code,
                "description": v.sale.description,
                "amount": money(-v.sale.amount),
            }
            for v in r.lines
            if isinstance(v, Void)
        ],
        "discounts": [
            {"description": d.description, "amount": money(-d.amount)} for d in r.discounts()
        ],
        "loyalty": r.loyalty,
        "total": money(r.total()) if complete else None,
        "totals_match": True if complete else None,
    }


def gtin(body: str) -> str:
    """A GTIN (EAN-13, UPC-A as 13 digits, EAN-8) from its body: the GS1 check digit added."""
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return body + str(-total % 10)


def money(value: Decimal) -> str:
    return str(value.quantize(CENT))


def comma(value: Decimal) -> str:
    """2.49 -> "2,49" (German receipts)."""
    return money(value).replace(".", ",")


# --- ESC/POS (Epson's command set, as POS software sends it) -----------------------------

ESC, GS = b"\x1b", b"\x1d"
INIT = ESC + b"@"
LEFT, CENTER = ESC + b"a\x00", ESC + b"a\x01"
BOLD_ON, BOLD_OFF = ESC + b"E\x01", ESC + b"E\x00"
UNDERLINE_ON, UNDERLINE_OFF = ESC + b"-\x01", ESC + b"-\x00"
DRAWER_KICK = ESC + b"p\x00\x19\xfa"  # pin 2, 50 ms on, 500 ms off
CUT = GS + b"V\x42\x00"  # function B: feed to the cutter, then a partial cut


def size(width: int, height: int) -> bytes:
    """GS ! n: character size, 1-8 times in each direction."""
    return GS + b"!" + bytes([(width - 1) << 4 | (height - 1)])


def feed(lines: int) -> bytes:
    """ESC d n: print what is buffered and feed n lines."""
    return ESC + b"d" + bytes([lines])


def code_page(n: int) -> bytes:
    """ESC t n: select a character code table (19 = PC858, Euro)."""
    return ESC + b"t" + bytes([n])


def raster_logo(width_px: int = 192, height_px: int = 48) -> bytes:
    """GS v 0: a raster image. The pixel bytes hit every value, LF and ESC included."""
    width_bytes = width_px // 8
    pixels = bytes(
        (x * 37 + y * 11 + (x ^ y)) & 0xFF for y in range(height_px) for x in range(width_bytes)
    )
    header = GS + b"v0\x00" + width_bytes.to_bytes(2, "little") + height_px.to_bytes(2, "little")
    return header + pixels


def barcode_code128(payload: str) -> bytes:
    """GS H/h/w then GS k 73: a CODE128 barcode, code set B, text printed below it."""
    data = b"{B" + payload.encode("ascii")
    setup = GS + b"H\x02" + GS + b"h\x50" + GS + b"w\x02"
    return setup + GS + b"k\x49" + bytes([len(data)]) + data


class Printout:
    """Bytes for one printer: text encoded in its code page, commands passed through."""

    def __init__(self, encoding: str, newline: bytes = b"\n") -> None:
        self.encoding = encoding
        self.newline = newline
        self.data = bytearray()

    def raw(self, *commands: bytes) -> None:
        for c in commands:
            self.data += c

    def line(self, *parts: str | bytes) -> None:
        for part in parts:
            self.data += part.encode(self.encoding) if isinstance(part, str) else part
        self.data += self.newline


# --- epson-grocery: a US supermarket on an Epson TM-T88 (42 columns, PC437) --------------

OAT_MILK = Sale(gtin("000000012345"), "OAT MILK 1L", Decimal("4.98"), "2", None, Decimal("2.49"))
BANANAS = Sale("4011", "BANANAS", Decimal("0.65"), "1.10", "lb", Decimal("0.59"))
SODA = Sale(gtin("000000067890"), "SODA 2L", Decimal("1.99"), tax_class="T")

EPSON_RECEIPTS = [
    Receipt(
        "001842",
        [OAT_MILK, BANANAS, SODA, Void(SODA), Discount("MEMBER PRICE OAT MILK", Decimal("0.50"))],
        Tender("VISA", "4111 1111 1111 1111"),
        "03/14/25 09:12:44",
        loyalty="9900011122233",
    ),
    Receipt(
        "001843",
        [
            Sale(gtin("000787423518"), "GV WHOLE MILK GAL", Decimal("3.48")),
            Sale(gtin("000120000012"), "COLA 12PK", Decimal("6.98"), tax_class="T"),
            Sale(gtin("000333832220"), "PAPER TOWELS 6R", Decimal("8.97"), tax_class="T"),
            Sale(gtin("000720367102"), "YOGURT CUP", Decimal("3.00"), "3", None, Decimal("1.00")),
            Sale("4065", "GREEN PEPPERS", Decimal("1.37"), "0.86", "lb", Decimal("1.59")),
        ],
        Tender("CASH", given=Decimal("30.00")),
        "03/14/25 09:20:03",
        tax=Decimal("1.00"),
    ),
    Receipt(
        "001844",
        [
            Sale(gtin("000413310009"), "COFFEE GROUND 12OZ", Decimal("7.49"), tax_class="F"),
            Sale(gtin("000445003411"), "ORANGE JUICE 52OZ", Decimal("3.99")),
            Discount("MFR COUPON COFFEE", Decimal("1.00")),
            Sale(gtin("000722500033"), "WHEAT BREAD", Decimal("2.79")),
        ],
        Tender("MASTERCARD", "************4444"),
        "03/14/25 09:31:17",
        loyalty="9900011199887",
    ),
    # The lane lost power half-way through: the next receipt starts over it.
    Receipt(
        None,
        [
            Sale(gtin("000284000457"), "CHIPS 10OZ", Decimal("4.29"), tax_class="T"),
            Sale(gtin("000111100012"), "SALSA MILD", Decimal("3.19")),
        ],
        Tender("CASH"),
        "03/14/25 09:40:51",
        ending="cut_off",
    ),
    Receipt(
        "001846",
        [
            Sale(gtin("000111100012"), "SALSA MILD", Decimal("3.19")),
            Sale("4046", "AVOCADO", Decimal("2.00"), "2", None, Decimal("1.00")),
            Sale(gtin("000284000457"), "CHIPS 10OZ", Decimal("4.29"), tax_class="T"),
        ],
        Tender("DEBIT", "************5556"),
        "03/14/25 09:42:30",
        tax=Decimal("0.27"),
    ),
]


US_TAX_RATE = Decimal("0.0625")  # Illinois general merchandise; groceries ("F") are exempt


def us_tax(r: Receipt) -> Decimal:
    taxable = sum((s.amount for s in r.sales() if s.tax_class == "T"), Decimal(0))
    return (taxable * US_TAX_RATE).quantize(CENT, ROUND_HALF_UP)


def epson_receipt(r: Receipt, number_seq: int) -> bytes:
    assert r.ending == "cut_off" or r.tax == us_tax(r), (r.number, us_tax(r))
    p = Printout("cp437")
    p.raw(INIT, CENTER, raster_logo())
    p.line(size(2, 2), BOLD_ON, "FRESHWAY MARKET", BOLD_OFF, size(1, 1))
    p.line("1200 HARBOR BLVD")
    p.line("SPRINGFIELD, IL 62701")
    p.line("(217) 555-0142")
    p.raw(LEFT)
    p.line("")
    p.line("ST# 0417 OP# 000023 TE# 03")
    p.line("")
    for line in r.lines:
        if isinstance(line, Sale):
            assert len(line.description) <= 18, "this layout has 18 columns for it"
            p.line(
                f"{line.description:<18} {line.code:<13} {money(line.amount):>7} {line.tax_class}"
            )
            if line.unit:
                p.line(f"   {line.quantity} {line.unit} @ {money(line.unit_price)} /{line.unit}")
            elif line.quantity:
                p.line(f"   {line.quantity} @ {money(line.unit_price)}")
        elif isinstance(line, Void):
            s = line.sale
            p.line(
                BOLD_ON,
                f"{'VOID ' + s.description:<18} {s.code:<13} {money(s.amount) + '-':>8}",
                BOLD_OFF,
            )
        else:
            p.line(f"{line.description:<32}{money(line.amount) + '-':>10}")
    if r.ending == "cut_off":
        return bytes(p.data)
    if r.loyalty:
        p.line(f"MEMBER # {r.loyalty:>33}")
    p.line("")
    p.line(f"{'SUBTOTAL':<30}{money(r.subtotal()):>12}")
    p.line(f"{'TAX 1   6.250 %':<30}{money(r.tax):>12}")
    p.line(BOLD_ON, size(1, 2), f"{'TOTAL':<30}{money(r.total()):>12}", size(1, 1), BOLD_OFF)
    t = r.tender
    if t.kind == "CASH":
        assert t.given is not None
        p.line(f"{'CASH TEND':<30}{money(t.given):>12}")
        p.line(f"{'CHANGE DUE':<30}{money(t.given - r.total()):>12}")
        p.raw(DRAWER_KICK)
    else:
        p.line(f"{t.kind + ' TEND':<30}{money(r.total()):>12}")
        p.line(f"ACCOUNT # {t.card}  C")
        p.line(f"APPROVAL # {831 + number_seq:06d}")
        p.line(f"REF # {507312340000 + number_seq}")
        p.line("AID A0000000031010")
        p.line(f"TC 9F2A1B3C4D5E6F{number_seq:02d}")
        p.line(f"{'CHANGE DUE':<30}{'0.00':>12}")
    p.line("")
    p.line(f"# ITEMS SOLD {len(r.sales())}")
    p.line(r.time)
    p.line("YOUR CASHIER TODAY WAS MARIA")
    p.line("")
    p.raw(CENTER)
    p.line("THANK YOU FOR SHOPPING")
    p.line(UNDERLINE_ON, "AT FRESHWAY MARKET", UNDERLINE_OFF)
    assert r.number is not None
    # The barcode carries store, terminal and transaction: T0417 03 001842.
    p.raw(barcode_code128(f"T041703{r.number}"))
    p.raw(feed(4), CUT)
    return bytes(p.data)


def epson_capture() -> tuple[bytes, list[Receipt]]:
    return b"".join(epson_receipt(r, i) for i, r in enumerate(EPSON_RECEIPTS)), EPSON_RECEIPTS


# --- journal-dvr: a POS journal port feeding a DVR's text insertion (one event per line) --

JOURNAL_RECEIPTS = [
    Receipt(
        "004211",
        [
            Sale(gtin("000000012345"), "OAT MILK 1L", Decimal("4.98"), "2", None, Decimal("2.49")),
            Sale("4011", "BANANAS", Decimal("0.65"), "1.10", "lb", Decimal("0.59")),
            (soda := Sale(gtin("000000067890"), "SODA 2L", Decimal("1.99"))),
            Void(soda),
            Discount("MEMBER PRICE OAT MILK", Decimal("0.50")),
        ],
        Tender("VISA", VISA_TEST_PAN),
        "2025-03-14 09:12:01",
        loyalty="9900011122233",
    ),
    Receipt(
        "004212",
        [
            Sale(gtin("000120000012"), "COLA 12PK", Decimal("6.98")),
            Sale(gtin("000284000457"), "CHIPS 10OZ", Decimal("4.29")),
        ],
        Tender("CASH"),
        "2025-03-14 09:16:40",
        ending="cancelled",
    ),
    # The journal dropped this transaction's last lines: the next TXN START ends it.
    Receipt(
        "004213",
        [
            Sale(gtin("000787423518"), "WHOLE MILK GAL", Decimal("3.48")),
            Sale("4065", "GREEN PEPPERS", Decimal("1.37"), "0.86", "lb", Decimal("1.59")),
        ],
        Tender("CASH"),
        "2025-03-14 09:19:12",
        ending="cut_off",
    ),
    Receipt(
        "004214",
        [
            (cereal := Sale(gtin("000160002752"), "CEREAL OAT 18OZ", Decimal("4.49"))),
            Sale(gtin("000333832220"), "PAPER TOWELS 6R", Decimal("8.97")),
            Sale(gtin("000720367102"), "YOGURT CUP", Decimal("3.00"), "3", None, Decimal("1.00")),
            Void(cereal),
            Discount("STORE COUPON YOGURT", Decimal("0.75")),
        ],
        Tender("CASH", given=Decimal("20.00")),
        "2025-03-14 09:21:55",
        tax=Decimal("0.56"),
    ),
    Receipt(
        "004215",
        [
            Sale(gtin("000413310009"), "COFFEE GROUND 12OZ", Decimal("7.49")),
            Sale(gtin("000722500033"), "WHEAT BREAD", Decimal("2.79")),
        ],
        Tender("DEBIT", "************5556"),
        "2025-03-14 09:27:08",
        loyalty="9900011199887",
    ),
]


def _clock(start: str, step_s: int) -> Callable[[], str]:
    """Journal timestamps: start, then step_s seconds per event."""
    day, hms = start.split(" ")
    h, m, s = (int(x) for x in hms.split(":"))
    seconds = [h * 3600 + m * 60 + s]

    def tick() -> str:
        t = seconds[0]
        seconds[0] += step_s
        return f"{day} {t // 3600:02d}:{t // 60 % 60:02d}:{t % 60:02d}"

    return tick


def journal_receipt(r: Receipt) -> bytes:
    p = Printout("ascii", newline=b"\r\n")
    now = _clock(r.time, 3)

    def event(kind: str, rest: str = "") -> None:
        p.line(f"{now()} L03 {kind:<9} {rest}".rstrip())

    event("SIGN ON", "OP 0023")
    event("TXN START", f"#{r.number} OP 0023")
    for line in r.lines:
        if isinstance(line, Sale):
            # This POS journals the quantity or weight first, then the item it belongs to.
            if line.unit:
                unit = line.unit.upper()
                event("WT", f"{line.quantity} {unit} @ {money(line.unit_price)}/{unit}")
            elif line.quantity:
                event("QTY", f"{line.quantity} @ {money(line.unit_price)}")
            event("ITEM", f"{line.code:<13} {line.description:<20} {money(line.amount):>8}")
        elif isinstance(line, Void):
            s = line.sale
            event("VOID", f"{s.code:<13} {s.description:<20} {money(-s.amount):>8}")
        else:
            event("DISC", f"{line.description:<34} {money(-line.amount):>8}")
    if r.ending == "cancelled":
        event("NO SALE")
        event("TXN CANCEL", f"#{r.number}")
        return bytes(p.data)
    if r.ending == "cut_off":
        return bytes(p.data)
    if r.loyalty:
        event("LOYALTY", r.loyalty)
    event("SUBTOTAL", f"{money(r.subtotal()):>8}")
    event("TAX", f"{money(r.tax):>8}")
    event("TOTAL", f"{money(r.total()):>8}")
    t = r.tender
    if t.kind == "CASH":
        assert t.given is not None
        event("TENDER", f"CASH {money(t.given):>8}")
        event("CHANGE", f"{money(t.given - r.total()):>8}")
    else:
        event("TENDER", f"{t.kind} {t.card} AUTH 083311 {money(r.total()):>8}")
    event("DRAWER", "OPEN")
    event("TXN END", f"#{r.number}")
    return bytes(p.data)


def journal_capture() -> tuple[bytes, list[Receipt]]:
    data = b"".join(journal_receipt(r) for r in JOURNAL_RECEIPTS)
    # The DVR link also carries the lane's heartbeat between transactions.
    heartbeat = b"2025-03-14 09:30:00 L03 HEARTBEAT\r\n"
    return data + heartbeat, JOURNAL_RECEIPTS


# --- eu-escpos: a German market hall on an ESC/POS printer (PC858, comma decimals) ------

VOLLMILCH = Sale(
    gtin("400840040162"), "Vollmilch 3,5% 1L", Decimal("2.38"), "2", None, Decimal("1.19"), "A"
)
GOUDA = Sale(
    gtin("291234500249"), "Gouda jung Theke", Decimal("2.49"), "0.834", "kg", Decimal("2.99"), "A"
)
JOGHURT = Sale(gtin("400550032201"), "Joghurt Natur 500g", Decimal("1.29"), tax_class="A")
BROT = Sale(gtin("210000100000"), "Bauernbrot 1kg", Decimal("3.49"), tax_class="A")
ORANGENSAFT = Sale(gtin("400216001234"), "Orangensaft 1L", Decimal("1.99"), tax_class="B")

EU_RECEIPTS = [
    Receipt(
        "5731",
        [VOLLMILCH, GOUDA, JOGHURT, Discount("Rabatt Joghurt", Decimal("0.30"))],
        Tender("VISA", "************1111"),
        "14.03.2025 18:42",
        loyalty="271004567812",
        extra={"merchant_pan": VISA_TEST_PAN},
    ),
    Receipt(
        "5732",
        [
            BROT,
            (
                milk := Sale(
                    gtin("400840040162"), "Vollmilch 3,5% 1L", Decimal("1.19"), tax_class="A"
                )
            ),
            ORANGENSAFT,
            Void(milk),
            Sale(gtin("410442012345"), "Äpfel Elstar 1kg", Decimal("2.79"), tax_class="A"),
        ],
        Tender("CASH", given=Decimal("20.00")),
        "14.03.2025 18:47",
    ),
    Receipt(
        "5733",
        [VOLLMILCH, Sale(gtin("400123450001"), "Bio Eier 10er", Decimal("3.99"), tax_class="A")],
        Tender("CASH"),
        "14.03.2025 18:51",
        ending="cancelled",
    ),
    Receipt(
        "5734",
        [
            Sale(gtin("400990012345"), "Wasser 6x1,5L", Decimal("2.94"), tax_class="B"),
            Sale(gtin("200000000001"), "Pfand 6x0,25", Decimal("1.50"), tax_class="B"),
            Sale(gtin("200000000002"), "Leergut Rückgabe", Decimal("-0.75"), tax_class="B"),
            Sale(
                gtin("295432100149"),
                "Aufschnitt Theke",
                Decimal("1.49"),
                "0.166",
                "kg",
                Decimal("8.99"),
                "A",
            ),
            Discount("Rabatt Mitarbeiter 10%", Decimal("0.52")),
        ],
        Tender("MASTERCARD", "************4444"),
        "14.03.2025 18:55",
        loyalty="271009998881",
    ),
]

EURO = "\u20ac"  # PC858 0xD5: the reason this printer is switched to table 19


def eu_vat(r: Receipt) -> list[tuple[str, str, Decimal, Decimal, Decimal]]:
    """German VAT block: (class, rate, net, vat, gross) per class; VAT is included in prices."""
    rows = []
    for cls, rate in (("A", Decimal("7")), ("B", Decimal("19"))):
        gross = sum((s.amount for s in r.sales() if s.tax_class == cls), Decimal(0))
        if cls == "A":
            gross -= sum((d.amount for d in r.discounts()), Decimal(0))
        if gross == 0:
            continue
        net = (gross * 100 / (100 + rate)).quantize(CENT, ROUND_HALF_UP)
        rows.append((cls, f"{rate}%", net, gross - net, gross))
    return rows


def eu_receipt(r: Receipt, seq: int) -> bytes:
    p = Printout("cp858")
    p.raw(INIT, code_page(19), CENTER)
    p.line(size(2, 2), "MARKTHALLE", size(1, 1))
    p.line(BOLD_ON, "Frische & Feines GmbH", BOLD_OFF)
    p.line("Hauptstraße 12 · 10115 Berlin")
    p.line("USt-IdNr. DE123456789")
    p.raw(LEFT)
    p.line("")
    p.line(f"Bon-Nr. {r.number}   Kasse 2   {r.time}")
    p.line(f"{'':<32}{EURO:>8}")
    for line in r.lines:
        if isinstance(line, Sale):
            assert len(line.description) <= 18, "this layout has 18 columns for it"
            p.line(
                f"{line.code:<13} {line.description:<18}{comma(line.amount):>8} {line.tax_class}"
            )
            if line.unit:
                qty = line.quantity.replace(".", ",") if line.quantity else ""
                p.line(f"  {qty} {line.unit} x {comma(line.unit_price)} EUR/{line.unit}")
            elif line.quantity:
                p.line(f"  {line.quantity} x {comma(line.unit_price)}")
        elif isinstance(line, Void):
            s = line.sale
            p.line(f"{'Storno ' + s.description:<32}{comma(-s.amount):>8} {s.tax_class}")
        else:
            p.line(f"{line.description:<32}{comma(-line.amount):>8} A")
    if r.ending == "cancelled":
        p.line("")
        p.line(BOLD_ON, "*** BON ABGEBROCHEN ***", BOLD_OFF)
        p.raw(feed(3), CUT)
        return bytes(p.data)
    p.line(f"{'':<32}{'--------':>8}")
    p.line(size(1, 2), BOLD_ON, f"{'SUMME EUR':<32}{comma(r.total()):>8}", BOLD_OFF, size(1, 1))
    p.line("")
    if r.loyalty:
        card = " ".join(r.loyalty[i : i + 4] for i in range(0, len(r.loyalty), 4))
        p.line(f"Kundenkarte {card}")
    t = r.tender
    if t.kind == "CASH":
        assert t.given is not None
        p.line(f"{'Gegeben Bar':<30}{EURO} {comma(t.given):>7}")
        p.line(f"{'Rückgeld':<30}{EURO} {comma(t.given - r.total()):>7}")
        p.raw(DRAWER_KICK)
    else:
        p.line(f"{'Geg. Kartenzahlung':<30}{EURO} {comma(r.total()):>7}")
        p.line("")
        p.line(CENTER, "Kundenbeleg", LEFT)
        p.line(f"Terminal-ID   {58213300 + seq}")
        p.line(f"TA-Nr {4711 + seq:06d}   BNr {612 + seq:04d}")
        p.line(f"Karte {t.card}")
        p.line(f"Genehmigungs-Nr. {308112 + seq}")
        p.line(f"Betrag EUR {comma(r.total())}")
        p.line("Zahlung erfolgt")
        if "merchant_pan" in r.extra:
            # Badly configured terminals print the merchant copy unmasked.
            p.line("")
            p.line(CENTER, "Händlerbeleg", LEFT)
            p.line(f"PAN {r.extra['merchant_pan']}  gültig bis 12/30")
            p.line(f"Betrag EUR {comma(r.total())}")
    p.line("")
    p.line(f"{'MwSt':<6}{'Netto':>12}{'MwSt':>10}{'Brutto':>12}")
    for cls, rate, net, vat, gross in eu_vat(r):
        p.line(f"{cls} {rate:<4}{comma(net):>12}{comma(vat):>10}{comma(gross):>12}")
    p.line("")
    p.line(f"TSE-Transaktion: {90211 + seq}")
    p.line(f"TSE-Start: 2025-03-14T{r.time[-5:]}:0{seq}")
    p.line("TSE-Signatur: MEUCIQD3n4Kf2vW8Yt0s9bQ==")
    p.line("")
    p.line(CENTER, "Vielen Dank für Ihren Einkauf!", LEFT)
    p.raw(feed(4), CUT)
    return bytes(p.data)


def eu_capture() -> tuple[bytes, list[Receipt]]:
    return b"".join(eu_receipt(r, i) for i, r in enumerate(EU_RECEIPTS)), EU_RECEIPTS


CAPTURES: dict[str, Callable[[], tuple[bytes, list[Receipt]]]] = {
    "epson-grocery": epson_capture,
    "journal-dvr": journal_capture,
    "eu-escpos": eu_capture,
}


def main() -> None:
    for name, build in CAPTURES.items():
        data, receipts = build()
        (HERE / f"{name}.bin").write_bytes(data)
        expected = [planted(r) for r in receipts]
        text = json.dumps(expected, indent=1, ensure_ascii=False) + "\n"
        (HERE / f"{name}.expected.json").write_text(text, encoding="utf-8")
        print(f"{name}: {len(data)} bytes, {len(receipts)} transactions")


if __name__ == "__main__":
    main()
