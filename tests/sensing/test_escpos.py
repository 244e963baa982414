"""ESC/POS tokenizer: text, code pages, the command table, caps, resyncs, chunking, noise."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sensing.escpos import Barcode, Cut, EscPosTokenizer, Line, Reset, Token

TS = 7.0
ESC, GS, FS, DLE = b"\x1b", b"\x1d", b"\x1c", b"\x10"
INIT = ESC + b"@"
CUT = GS + b"V\x00"


def make_tokenizer(**overrides: Any) -> EscPosTokenizer:
    return EscPosTokenizer(**overrides)


def feed_chunks(
    data: bytes, cuts: Sequence[int] = (), *, flush: bool = False, **overrides: Any
) -> tuple[list[Token], EscPosTokenizer]:
    """Feed ``data`` split at ``cuts`` (sorted offsets); every token gets ts=TS."""
    tok = make_tokenizer(**overrides)
    out: list[Token] = []
    start = 0
    for cut in [*cuts, len(data)]:
        out += tok.feed(data[start:cut], TS)
        start = cut
    if flush:
        out += tok.flush(TS)
    return out, tok


def lines_of(tokens: list[Token]) -> list[str]:
    return [t.text for t in tokens if isinstance(t, Line)]


def bound(tok: EscPosTokenizer) -> int:
    """The documented ceiling of buffered_bytes."""
    return max(tok.max_line, 257) + 10


# --- text ------------------------------------------------------------------------------


def test_lines_end_at_lf_and_ff_and_empty_lines_are_kept() -> None:
    """LF and FF end a line; LF LF is an empty line; text is not stripped."""
    out, tok = feed_chunks(b"  Milk 1L   \n\nBread\x0cEggs\n")
    assert out == [Line("  Milk 1L   ", TS), Line("", TS), Line("Bread", TS), Line("Eggs", TS)]
    assert tok.line_feeds == 4
    assert tok.stats()["lines"] == 4


def test_cr_is_dropped_and_ht_becomes_a_space() -> None:
    """CR vanishes without being garbage; HT prints as one space."""
    out, tok = feed_chunks(b"Qty\t2\r\n")
    assert out == [Line("Qty 2", TS)]
    assert tok.garbage == 0
    assert tok.printable == 5


def test_stray_control_bytes_are_counted_as_garbage() -> None:
    """C0 bytes that start no command, and DEL, are dropped and counted."""
    out, tok = feed_chunks(b"A\x01B\x7fC\x00\n")
    assert out == [Line("ABC", TS)]
    assert tok.garbage == 3


def test_printable_and_high_bytes_are_counted() -> None:
    """printable counts 0x20-0x7E (and HT), high counts 0x80-0xFF, both in lines."""
    _, tok = feed_chunks(b"ab\tc\x81\xff\n")
    assert (tok.printable, tok.high, tok.line_feeds) == (4, 2, 1)


def test_partial_line_waits_for_its_lf_across_chunks() -> None:
    """A line split over chunks comes out once, whole, when its LF arrives."""
    tok = make_tokenizer()
    assert tok.feed(b"TOT", 1.0) == []
    assert tok.feed(b"AL 9.99", 2.0) == []
    assert tok.feed(b"\n", 3.0) == [Line("TOTAL 9.99", 3.0)]


def test_flush_emits_the_partial_line_once() -> None:
    """flush() hands over the pending text (idle timeout, EOF) and then has nothing."""
    tok = make_tokenizer()
    tok.feed(b"Thank you", TS)
    assert tok.flush(8.0) == [Line("Thank you", 8.0)]
    assert tok.flush(9.0) == []


def test_overlong_line_is_dropped_whole_up_to_its_lf() -> None:
    """A line over max_line never comes out truncated; the next line is intact."""
    out, tok = feed_chunks(b"short\n" + b"x" * 11 + b"yz\nok\n", max_line=10)
    assert out == [Line("short", TS), Line("ok", TS)]
    assert tok.overlong_lines == 1


def test_overlong_line_split_over_chunks_is_dropped() -> None:
    """The drop holds when the line grows past max_line over several chunks."""
    data = b"123456\n" + b"abcdefgh" * 3 + b"\nend\n"
    out, tok = feed_chunks(data, [9, 14, 20, 28], max_line=10)
    assert lines_of(out) == ["123456", "end"]
    assert tok.overlong_lines == 1


def test_text_in_a_multibyte_encoding_is_decoded_per_line() -> None:
    """A non code-page encoding (UTF-8) still works, even split inside a character."""
    data = "héllo\nwörld\n".encode()
    out, _ = feed_chunks(data, [2, 9], encoding="utf-8")
    assert lines_of(out) == ["héllo", "wörld"]


# --- code pages ------------------------------------------------------------------------


def test_esc_t_19_selects_cp858_for_the_euro_sign() -> None:
    """ESC t 19 is cp858, where 0xD5 is the euro sign (cp437 has a box glyph there)."""
    out, tok = feed_chunks(ESC + b"t\x13\xd5 5.00\n")
    assert out == [Line("€ 5.00", TS)]
    assert tok.codepage_changes == 1


def test_esc_t_2_selects_cp850() -> None:
    """ESC t 2 is cp850: 0x81 is ü, and 0x9B is ø (it is ¢ in the default cp437)."""
    out, _ = feed_chunks(ESC + b"t\x02\x81ber \x9b\n")
    assert out == [Line("über ø", TS)]


def test_esc_at_returns_to_the_default_code_page() -> None:
    """After ESC @ the default page (cp437) is back: 0x9B is ¢ again."""
    out, _ = feed_chunks(ESC + b"t\x02\x9b\n" + INIT + b"\x9b\n")
    assert out == [Line("ø", TS), Reset(TS), Line("¢", TS)]


def test_code_page_change_mid_line_decodes_earlier_bytes_with_the_old_page() -> None:
    """Bytes before ESC t keep the page they were printed in."""
    out, _ = feed_chunks(b"A\x9b" + ESC + b"t\x02\x9b\n")
    assert out == [Line("A¢ø", TS)]


def test_unknown_code_page_keeps_the_current_one() -> None:
    """ESC t with a table we cannot decode is counted and changes nothing."""
    out, tok = feed_chunks(ESC + b"t\x02" + ESC + b"t\x63\x9b\n")
    assert out == [Line("ø", TS)]
    assert tok.unknown_codepages == 1
    assert tok.codepage_changes == 1


# --- the command table -----------------------------------------------------------------

# Each command with arguments that would print as text if they were not consumed.
COMMANDS = {
    "ESC ! n": ESC + b"!A",
    "ESC E n": ESC + b"EA",
    "ESC - n": ESC + b"-A",
    "ESC a n": ESC + b"aA",
    "ESC d n": ESC + b"dA",
    "ESC J n": ESC + b"JA",
    "ESC 2": ESC + b"2",
    "ESC 3 n": ESC + b"3A",
    "ESC M n": ESC + b"MA",
    "ESC R n": ESC + b"RA",
    "ESC G n": ESC + b"GA",
    "ESC { n": ESC + b"{A",
    "ESC V n": ESC + b"VA",
    "ESC r n": ESC + b"rA",
    "ESC SP n": ESC + b" A",
    "ESC % n": ESC + b"%A",
    "ESC c 5 n": ESC + b"c5A",
    "ESC U n": ESC + b"UA",
    "ESC p m t1 t2": ESC + b"pABC",
    "ESC $ nL nH": ESC + b"$AB",
    "ESC \\ nL nH": ESC + b"\\AB",
    "ESC W (8 args)": ESC + b"WABCDEFGH",
    "ESC * m=0 (x1)": ESC + b"*\x00\x03\x00" + b"\xff\x00\xff",
    "ESC * m=33 (x3)": ESC + b"*\x21\x02\x00" + b"\x01" * 6,
    "ESC & y c1 c2": ESC + b"&\x03AB" + b"\x02" + b"\x00" * 6 + b"\x01" + b"\x00" * 3,
    "ESC D tabs": ESC + b"D\x08\x10\x18\x00",
    "ESC ( A": ESC + b"(A\x02\x00AB",
    "GS ! n": GS + b"!A",
    "GS B n": GS + b"BA",
    "GS H n": GS + b"HA",
    "GS f n": GS + b"fA",
    "GS h n": GS + b"hA",
    "GS w n": GS + b"wA",
    "GS b n": GS + b"bA",
    "GS I n": GS + b"IA",
    "GS r n": GS + b"rA",
    "GS a n": GS + b"aA",
    "GS P x y": GS + b"PAB",
    "GS L nL nH": GS + b"LAB",
    "GS W nL nH": GS + b"WAB",
    "GS ^ r t m": GS + b"^ABC",
    "GS / m": GS + b"/A",
    "GS :": GS + b":",
    "GS ( k (QR store)": GS + b"(k\x0b\x001P0http://x",
    "GS ( L (graphics)": GS + b"(L\x04\x00\x30\x45\x30\x30",
    "GS v 0": GS + b"v0\x00\x02\x00\x03\x00" + b"\xaa" * 6,
    "GS 8 L": GS + b"8L\x03\x00\x00\x00" + b"\x30\x70\x00",
    "GS * x y": GS + b"*\x01\x02" + b"\xf0" * 16,
    "FS ( A": FS + b"(A\x02\x00AB",
    "FS p n m": FS + b"pAB",
    "FS q n": FS + b"q\x01\x01\x00\x01\x00" + b"\x00" * 8,
    "FS &": FS + b"&",
    "FS .": FS + b".",
    "FS ! n": FS + b"!A",
    "FS - n": FS + b"-A",
    "FS C n": FS + b"CA",
    "FS W n": FS + b"WA",
    "FS S n1 n2": FS + b"SAB",
    "FS 2 c1 c2 (72 bytes)": FS + b"2AB" + b"\x00" * 72,
    "DLE EOT n": DLE + b"\x04A",
    "DLE ENQ n": DLE + b"\x05A",
    "DLE DC4 fn m t": DLE + b"\x14ABC",
}


@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
def test_each_command_consumes_exactly_its_arguments(command: bytes) -> None:
    """Text around a command prints as if the command were not there."""
    out, tok = feed_chunks(b"before " + command + b"after\n")
    assert out == [Line("before after", TS)]
    assert tok.garbage == 0


@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
def test_each_command_survives_being_fed_byte_by_byte(command: bytes) -> None:
    """Splitting a command anywhere changes nothing."""
    data = b"before " + command + b"after\n"
    out, _ = feed_chunks(data, list(range(1, len(data))))
    assert out == [Line("before after", TS)]


def test_unknown_escape_is_two_garbage_bytes() -> None:
    """ESC with a second byte nobody defined: both bytes dropped, text goes on."""
    out, tok = feed_chunks(b"ab" + ESC + b"~cd\n")
    assert out == [Line("abcd", TS)]
    assert tok.garbage == 2


def test_introducer_in_second_position_starts_the_real_command() -> None:
    """A stray GS or ESC cannot hide the ESC @ right after it."""
    out, tok = feed_chunks(GS + ESC + ESC + b"@text\n")
    assert out == [Reset(TS), Line("text", TS)]
    assert tok.garbage == 2


def test_lone_dle_drops_only_itself() -> None:
    """DLE is a command only with EOT, ENQ or DC4; otherwise the next byte is text."""
    out, tok = feed_chunks(b"a" + DLE + b"bc\n")
    assert out == [Line("abc", TS)]
    assert tok.garbage == 1


def test_esc_at_inside_fixed_arguments_resynchronises() -> None:
    """ESC @ where ESC ! expected its argument is a Reset, not an argument."""
    out, tok = feed_chunks(b"noise" + ESC + b"!" + INIT + b"receipt\n")
    assert out == [Reset(TS), Line("receipt", TS)]
    assert tok.resyncs == 1


# --- cuts, resets and barcodes ---------------------------------------------------------


CUTS = [
    *(GS + b"V" + m for m in (b"\x00", b"\x01", b"0", b"1")),  # GS V m
    *(GS + b"V" + m + b"A" for m in (b"A", b"B", b"a", b"b", b"g", b"h")),  # GS V m n
    ESC + b"i",
    ESC + b"m",
]


@pytest.mark.parametrize("command", CUTS)
def test_cut_commands_emit_cut_and_consume_their_arguments(command: bytes) -> None:
    """GS V in both forms, ESC i and ESC m are cuts; an argument 'A' never prints."""
    out, tok = feed_chunks(b"last\n" + command + b"next\n")
    assert out == [Line("last", TS), Cut(TS), Line("next", TS)]
    assert tok.cuts == 1


def test_cut_flushes_a_pending_partial_line_first() -> None:
    """Text without LF before a cut belongs to the receipt being cut."""
    out, _ = feed_chunks(b"Thank you" + CUT)
    assert out == [Line("Thank you", TS), Cut(TS)]


def test_reset_discards_the_partial_line() -> None:
    """ESC @ clears the printer's buffer, so unterminated text before it never prints."""
    out, _ = feed_chunks(b"half a li" + INIT + b"Store\n")
    assert out == [Reset(TS), Line("Store", TS)]


def test_barcode_nul_terminated_form_keeps_its_payload() -> None:
    """GS k m (0-6) d... NUL: the data becomes a Barcode; the text after is intact."""
    out, tok = feed_chunks(GS + b"k\x04TX-000123\x00Thanks\n")
    assert out == [Barcode("TX-000123", TS), Line("Thanks", TS)]
    assert tok.barcodes == 1


def test_barcode_counted_form_keeps_its_payload() -> None:
    """GS k m (65-79) n d1..dn: n bytes of data, even a NUL or an LF among them."""
    out, _ = feed_chunks(GS + b"kI\x0b{B12\x0034\n678" + b"after\n")
    assert out == [Barcode("{B12\x0034\n678", TS), Line("after", TS)]


def test_barcode_starts_a_fresh_line() -> None:
    """Pending text is emitted before the barcode it was printed above."""
    out, _ = feed_chunks(b"Order:" + GS + b"kE\x03ABC\n")
    assert out == [Line("Order:", TS), Barcode("ABC", TS), Line("", TS)]


def test_barcode_without_nul_is_capped_at_255_bytes() -> None:
    """A form A barcode never closed within 255 bytes is abandoned and counted capped."""
    data = GS + b"k\x04" + b"7" * 300 + b"\x00tail\n"
    out, tok = feed_chunks(data)
    assert not [t for t in out if isinstance(t, Barcode)]
    assert tok.capped == 1
    assert lines_of(out)[-1].endswith("tail")


def test_barcode_payload_is_decoded_as_ascii_with_replacement() -> None:
    """High bytes in a barcode become U+FFFD instead of raising."""
    out, _ = feed_chunks(GS + b"kI\x03AB\xe9")
    assert out == [Barcode("AB\ufffd", TS)]


# --- caps and resyncs ------------------------------------------------------------------


def test_huge_gs_paren_length_is_capped() -> None:
    """GS ( with 0xFFFF skips only max_payload bytes; the rest is parsed again."""
    data = b"pre" + GS + b"(A\xff\xff" + b"\x00" * 5000 + b"after\n"
    out, tok = feed_chunks(data)
    assert tok.capped == 1
    assert tok.skipped == 3 + 4096  # X pL pH, then the capped payload
    assert tok.garbage == 5000 - 4096  # the zero bytes after the cap are stray NULs
    assert out == [Line("preafter", TS)]


def test_huge_raster_is_capped_at_max_image() -> None:
    """GS v 0 asking for 65535 x 65535 bytes skips at most max_image."""
    data = GS + b"v0\x00\xff\xff\xff\xff" + b"\xff" * 70_000 + b"\x00" * 100
    _, tok = feed_chunks(data, list(range(0, len(data), 4096)))
    assert tok.capped == 1
    assert tok.skipped == 5 + 65536  # m xL xH yL yH, then the capped raster


def test_esc_at_inside_a_skipped_payload_resynchronises() -> None:
    """ESC @ inside a payload abandons the skip and is a Reset."""
    data = GS + b"(A\xff\x0f" + b"\x00\x7f" * 50 + INIT + b"Receipt 42\n"
    out, tok = feed_chunks(data)
    assert out == [Reset(TS), Line("Receipt 42", TS)]
    assert tok.resyncs == 1


def test_esc_at_split_across_chunks_inside_a_payload_resynchronises() -> None:
    """The ESC @ watch carries across a chunk boundary between ESC and @."""
    data = GS + b"(A\xff\x0f" + b"\x00" * 10 + INIT + b"Receipt 42\n"
    split = data.index(INIT) + 1
    out, _ = feed_chunks(data, [split])
    assert out == [Reset(TS), Line("Receipt 42", TS)]


def test_text_run_inside_a_skipped_payload_resynchronises() -> None:
    """A run of >= resync_run printable bytes and an LF ends a skip and becomes the line."""
    raster = GS + b"v0\x00\x10\x00\xff\x00"  # 16 x 255 bytes expected
    data = b"junk" + raster + bytes(range(8)) * 20 + b"a long enough text line\nsecond\n"
    out, tok = feed_chunks(data)
    assert out == [Line("a long enough text line", TS), Line("second", TS)]
    assert tok.resyncs == 1


def test_text_run_split_over_chunks_still_resynchronises() -> None:
    """The run may start in one chunk and meet its LF (after CRs) three chunks later."""
    data = GS + b"(A\x00\x10" + b"\x01\x02" + b"a long enough text line\r\nsecond\n"
    cuts = [8, 15, 24, 31, 32]
    out, tok = feed_chunks(data, cuts)
    assert out == [Line("a long enough text line", TS), Line("second", TS)]
    assert tok.resyncs == 1


def test_cr_inside_a_run_breaks_it_even_across_chunks() -> None:
    """CRs may only sit between a run and its LF: text after a CR starts a new run."""
    data = GS + b"(A\x00\x01" + b"\x01abc\r" + b"defghijklmnopqrstu\n"
    out, _ = feed_chunks(data, [data.index(b"\r") + 1])
    assert out == [Line("defghijklmnopqrstu", TS)]


def test_a_run_too_long_to_sit_beside_the_partial_line_is_not_kept() -> None:
    """Memory: partial line + a candidate run never exceed max_line (+ a header).

    A run that cannot fit beside the pending line is only counted; if an LF then makes
    it a line, that line is dropped as overlong rather than stored.
    """
    tok = make_tokenizer(max_line=20)
    tok.feed(b"0123456789" + GS + b"(A\xc8\x00\x01" + b"x" * 40, TS)
    assert tok.buffered_bytes <= 20 + 10
    assert tok.feed(b"\nnext\n", TS) == [Line("next", TS)]
    assert (tok.resyncs, tok.overlong_lines) == (1, 1)


@pytest.mark.parametrize(("stops", "capped", "line"), [(32, 0, "ab"), (33, 1, "a!b")])
def test_esc_d_takes_at_most_32_tab_stops(stops: int, capped: int, line: str) -> None:
    """ESC D with 32 stops then NUL is whole; a 33rd stop ('!') is text again (capped)."""
    data = b"a" + ESC + b"D" + bytes(range(1, stops + 1)) + b"\x00b\n"
    out, tok = feed_chunks(data)
    assert tok.capped == capped
    assert out == [Line(line, TS)]


def test_short_runs_in_a_payload_do_not_resynchronise() -> None:
    """Printable runs shorter than resync_run, LF or not, stay payload."""
    payload = b"short\n" * 5
    out, tok = feed_chunks(b"x" + GS + b"(A" + bytes([len(payload), 0]) + payload + b"y\n")
    assert out == [Line("xy", TS)]
    assert tok.resyncs == 0


def test_run_ending_exactly_at_the_payload_end_resynchronises_on_the_next_lf() -> None:
    """A payload whose last bytes are a text run, followed by LF, gives that line."""
    line = b"exactly the payload end"
    data = b"noise" + GS + b"(A" + bytes([len(line), 0]) + line + b"\nnext\n"
    out, tok = feed_chunks(data)
    assert out == [Line(line.decode(), TS), Line("next", TS)]
    assert tok.resyncs == 1


def test_escpos_false_treats_escape_bytes_as_garbage() -> None:
    """Plain journal feeds: ESC/GS/FS/DLE are stray bytes and code pages never change."""
    out, tok = feed_chunks(ESC + b"E\x01bold " + ESC + b"t\x02\x9b\n", escpos=False)
    assert out == [Line("Ebold t¢", TS)]
    assert tok.garbage == 4
    assert tok.codepage_changes == 0


def test_reset_state_forgets_partial_line_command_and_code_page() -> None:
    """After a reconnect nothing of the old stream leaks into the new one."""
    tok = make_tokenizer()
    tok.feed(ESC + b"t\x02half line" + GS + b"(A\xff\xff\x00\x00", TS)
    tok.reset_state()
    assert tok.buffered_bytes == 0
    assert tok.feed(b"\x9b fresh\n", TS) == [Line("¢ fresh", TS)]


def test_stats_reports_every_counter() -> None:
    """stats() has the keys the serial adapter and health report read."""
    _, tok = feed_chunks(INIT + b"a\n" + GS + b"kE\x01Z" + CUT + ESC + b"t\x13")
    stats = tok.stats()
    assert set(stats) == {
        "printable",
        "high",
        "garbage",
        "line_feeds",
        "lines",
        "command_bytes",
        "skipped",
        "capped",
        "resyncs",
        "overlong_lines",
        "cuts",
        "barcodes",
        "codepage_changes",
        "unknown_codepages",
    }
    assert (stats["lines"], stats["cuts"], stats["barcodes"], stats["codepage_changes"]) == (
        1,
        1,
        1,
        1,
    )
    assert stats["command_bytes"] == 2 + 5 + 3 + 3  # ESC @, GS k m n Z, GS V 0, ESC t n


# --- noise: big and seeded -------------------------------------------------------------


def receipt_bytes(lines: list[str]) -> bytes:
    return INIT + b"\n".join(s.encode("ascii") for s in lines) + b"\n" + CUT


def tail_after_last_reset(tokens: list[Token]) -> list[Token]:
    resets = [k for k, t in enumerate(tokens) if isinstance(t, Reset)]
    assert resets, "no Reset: the receipt's ESC @ was lost"
    return tokens[resets[-1] + 1 :]


def test_receipt_after_two_megabytes_of_random_bytes_is_recovered() -> None:
    """Any amount of line noise leaves memory bounded and the next receipt whole."""
    rng = random.Random(20240611)
    noise = rng.randbytes(2_000_000)
    receipt = ["STORE 0042", "Milk 1L          1.19", "TOTAL            1.19"]
    tok = make_tokenizer()
    out: list[Token] = []
    data = noise + receipt_bytes(receipt)
    for start in range(0, len(data), 4096):
        out += tok.feed(data[start : start + 4096], TS)
        assert tok.buffered_bytes <= bound(tok)
    assert tail_after_last_reset(out) == [Line(s, TS) for s in receipt] + [Cut(TS)]


# --- properties ------------------------------------------------------------------------

# Pieces that make random input hit headers, length fields, payloads and resyncs.
FRAGMENTS = [
    ESC, GS, FS, DLE, INIT, CUT, b"\n", b"\r", b"\x00", b"@", b"A" * 20,
    GS + b"(", GS + b"k", GS + b"v0", GS + b"8L", ESC + b"*", ESC + b"&", ESC + b"D",
    FS + b"q", ESC + b"t", GS + b"V", b"a text line long enough\n", b"\xff", b"\x01",
]  # fmt: skip
PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
noise_piece = st.one_of(st.binary(max_size=12), st.sampled_from(FRAGMENTS))
noise = st.lists(noise_piece, max_size=40).map(b"".join)
tokenizer_options = st.fixed_dictionaries(
    {
        "max_line": st.sampled_from([512, 40, 8]),
        "max_payload": st.sampled_from([4096, 30]),
        "max_image": st.sampled_from([65536, 50]),
        "resync_run": st.sampled_from([16, 3]),
        "escpos": st.sampled_from([True, True, False]),
    }
)


@st.composite
def chunked(draw: st.DrawFn, data_strategy: st.SearchStrategy[bytes] = noise) -> tuple:
    data = draw(data_strategy)
    cuts = draw(st.lists(st.integers(0, len(data)), max_size=12).map(sorted))
    return data, cuts


@settings(max_examples=300, deadline=None)
@given(case=chunked(), options=tokenizer_options)
def test_any_chunking_gives_the_same_tokens_and_counters(case: tuple, options: dict) -> None:
    """Chunk boundaries anywhere (headers, lengths, barcodes, runs) change nothing."""
    data, cuts = case
    whole, tok_whole = feed_chunks(data, flush=True, **options)
    parts, tok_parts = feed_chunks(data, cuts, flush=True, **options)
    assert parts == whole
    assert tok_parts.stats() == tok_whole.stats()


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=3000), options=tokenizer_options)
def test_any_bytes_byte_by_byte_match_one_shot(data: bytes, options: dict) -> None:
    """The most extreme chunking, on unbiased bytes, never raises and matches one shot."""
    whole, _ = feed_chunks(data, flush=True, **options)
    parts, _ = feed_chunks(data, list(range(1, len(data))), flush=True, **options)
    assert parts == whole


@settings(max_examples=200, deadline=None)
@given(case=chunked(), options=tokenizer_options)
def test_buffered_bytes_stay_bounded(case: tuple, options: dict) -> None:
    """Whatever arrives, the tokenizer holds at most about one line of bytes."""
    data, cuts = case
    tok = make_tokenizer(**options)
    start = 0
    for cut in [*cuts, len(data)]:
        tok.feed(data[start:cut], TS)
        start = cut
        assert tok.buffered_bytes <= bound(tok)


@settings(max_examples=150, deadline=None)
@given(
    lines=st.lists(st.text(PRINTABLE, max_size=80), max_size=30),
    cuts=st.lists(st.integers(0, 3000), max_size=10).map(sorted),
)
def test_printable_lines_come_back_exactly(lines: list[str], cuts: list[int]) -> None:
    """Plain ASCII text joined with LF is returned line for line, in any chunking."""
    data = "".join(s + "\n" for s in lines).encode("ascii")
    out, _ = feed_chunks(data, [c for c in cuts if c <= len(data)])
    assert out == [Line(s, TS) for s in lines]


@settings(max_examples=200, deadline=None)
@given(
    junk=noise,
    lines=st.lists(st.text(PRINTABLE, max_size=60), min_size=1, max_size=8),
    cuts=st.lists(st.integers(0, 2000), max_size=6).map(sorted),
)
def test_receipt_after_noise_and_reset_is_recovered(
    junk: bytes, lines: list[str], cuts: list[int]
) -> None:
    """Whatever noise precedes it, ESC @ + a receipt + a cut comes back whole."""
    data = junk + receipt_bytes(lines)
    out, _ = feed_chunks(data, [c for c in cuts if c <= len(data)])
    assert tail_after_last_reset(out) == [Line(s, TS) for s in lines] + [Cut(TS)]


def common_suffix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


@settings(max_examples=200, deadline=None)
@given(
    junk=noise.filter(lambda b: len(b) <= 300),
    lines=st.lists(st.text(PRINTABLE, min_size=20, max_size=60), min_size=2, max_size=6),
)
def test_text_after_noise_resynchronises_without_reset(junk: bytes, lines: list[str]) -> None:
    """Lines of >= 20 printable characters after noise (no ESC @) are recovered.

    Every line after the first comes back exactly. The first comes back as a suffix:
    a command that started in the noise may have eaten its first bytes (as it would
    on the printer), so the last non-empty line or barcode before the exact ones
    must end with a non-empty suffix of it (the whole line when noise ends in text).
    """
    data = junk + "".join(s + "\n" for s in lines).encode("ascii")
    out, _ = feed_chunks(data)
    texts = [
        t.data if isinstance(t, Barcode) else t.text for t in out if not isinstance(t, Cut | Reset)
    ]
    rest = len(lines) - 1
    assert texts[-rest:] == lines[1:]
    before = [s for s in texts[:-rest] if s]
    assert before, "the first line left no trace"
    assert common_suffix(before[-1], lines[0]) > 0
