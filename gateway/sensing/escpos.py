"""ESC/POS byte stream -> receipt tokens: a pure, incremental, table-driven tokenizer.

A checkout lane's printer cable is tapped and its bytes are fed here chunk by chunk,
as the serial port delivers them. Out come ``Line`` (one printed line of text),
``Cut`` (end of a receipt), ``Reset`` (ESC @, usually the start of one) and
``Barcode`` (GS k, often the transaction number). Everything else a printer is told
(bold, alignment, logos, QR codes, drawer kicks) is consumed and dropped.

Why it is built this way:

- **Incremental and chunk-independent.** A serial read returns whatever has arrived,
  so a chunk may end anywhere: inside a command header, a length field, a barcode, a
  logo. Feeding the same bytes in any chunking yields the same tokens (and the same
  counters). A command header that straddles two chunks is kept (at most a few bytes,
  ``_MAX_HEADER``) and parsed again with the next chunk; every other state that
  crosses a chunk boundary is a handful of integers.
- **Table-driven.** Like escpos-tools' esc2text, commands are looked up by their
  second byte in one table per introducer (ESC, GS, FS, DLE): an int is a fixed
  argument count, a tuple names a small parser for the variable forms. Adding a
  command is one table line, and a command nobody listed costs two garbage bytes
  instead of desynchronising the parser.
- **Robust to noise.** A tap on a live cable sees line noise, wrong baud rates and
  mid-receipt plug-ins. A random ``GS (`` must not swallow the next receipt, so every
  length field is capped (``max_payload`` for ``GS (``/``FS (``/``ESC (`` blocks and
  other non-image data, ``max_image`` for ``GS ( L``, ``ESC *``, ``GS v 0``, ``GS 8 L``, ``GS *``
  and ``FS q``) and every skipped payload is watched for a way back: ESC @ (initialize
  printer) or a run of at least ``resync_run`` printable ASCII bytes ending in LF (a
  text line) abandons the skip. The watch is done with ``bytes.find`` and anchored
  regexes over each slice, carrying a few integers across chunk boundaries, never a
  Python loop per byte.
- **Fast.** It runs on a Raspberry Pi for every byte a printer gets. Text is handled in
  bulk: ``bytes.find`` (memchr) locates the next command introducer, the text before it
  is cleaned with ``bytes.translate``, counted, decoded and split into lines in C, and
  commands whose arguments cannot change a line (ESC E n, GS ! n...) do not even
  interrupt that text.
- **Bounded.** ``buffered_bytes`` (partial line, a retained run, a barcode's payload, a
  partial header) never exceeds ``max(max_line, 257) + 10`` whatever comes in: a line
  longer than ``max_line`` is dropped whole (never emitted truncated), payloads are
  skipped, not stored, and a run that might become a line is kept only while it fits
  beside the partial line (a longer one is counted as an overlong line if it resyncs).
- **Pure.** No asyncio and no I/O; time comes in as ``ts`` and is stamped on tokens.

Decisions worth knowing when reading the output:

- A cut (GS V, ESC i, ESC m) and a barcode (GS k) first emit any pending partial line:
  text printed just before them belongs with what came before. ESC @ discards it, as
  the printer clears its buffer.
- Any ESC @ found inside a command's arguments, length fields or payload is treated as
  a resynchronisation and processed as a Reset: that is where a receipt starts after
  noise. A command introducer (ESC, GS, FS, DLE) where a command's second byte should
  be restarts parsing there, so a stray ESC or GS before ESC @ cannot hide it.
- Skipped payload that ends in a printable run of at least ``resync_run`` bytes, with
  an LF right after the payload, is treated like a run found inside the payload. The
  exception is a barcode that ended normally, because "GS k ... data" followed by LF
  is how real receipts print barcodes.
- After resynchronising on a text run, only the run becomes the line (a suffix of the
  real line if the noise ate its start, as the printer would have done).

Sources: Epson's ESC/POS command reference (apd5 / TM-T88 series), escpos-tools'
``esc2text`` and python-escpos for the command table and argument counts.
"""

from __future__ import annotations

import codecs
import functools
import re
import sys
from collections.abc import Callable
from typing import NamedTuple


class Line(NamedTuple):
    """One printed line of text, decoded with the code page in force, without its LF/CR."""

    text: str
    ts: float


class Cut(NamedTuple):
    """A paper cut (GS V, ESC i, ESC m): the end of a receipt."""

    ts: float


class Reset(NamedTuple):
    """ESC @ (initialize printer): receipts usually start with it."""

    ts: float


class Barcode(NamedTuple):
    """A printed barcode's payload (GS k), decoded as ASCII; often the transaction number."""

    data: str
    ts: float


Token = Line | Cut | Reset | Barcode

# --- bytes ---------------------------------------------------------------------------

_NUL, _DLE, _ESC, _FS, _GS = 0x00, 0x10, 0x1B, 0x1C, 0x1D
_LF, _CR, _AT = 0x0A, 0x0D, 0x40
_INTRODUCERS = frozenset((_DLE, _ESC, _FS, _GS))
_charmap_decode = codecs.charmap_decode
# Builds a Line without NamedTuple's Python-level __new__: a third of the per-line cost.
_new_tuple = tuple.__new__
_ESC_AT = b"\x1b@"

# ESC t n -> Python codec, for the code pages Epson TM printers ship with that Python
# has a codec for. Other tables (Katakana, Thai, vendor pages) keep the current one.
CODE_PAGES: dict[int, str] = {
    0: "cp437",
    2: "cp850",
    3: "cp860",
    4: "cp863",
    5: "cp865",
    16: "cp1252",
    17: "cp866",
    18: "cp852",
    19: "cp858",
}

# GS k form B carries its length in one byte, so 255 is the longest real barcode; form
# A (NUL-terminated) gets the same limit so that noise cannot hold a barcode open.
_BARCODE_MAX = 255
# ESC D takes at most 32 tab positions; the printer treats what follows as data.
_TAB_STOPS_MAX = 32
# The longest command header held across a chunk boundary: ESC W and its 8 arguments
# (10 bytes) plus one byte of look-ahead when its last byte is ESC (ESC @ may follow).
_MAX_HEADER = 10

# --- compiled scanners ---------------------------------------------------------------

# Text cleaning: HT prints as a space and FF ends a line like LF; CR and every other
# C0 byte (and DEL) are dropped. ``translate`` deletes before it maps.
_TEXT_MAP = bytes.maketrans(b"\t\x0c", b" \n")
_TEXT_DROP = bytes(b for b in range(0x20) if b not in (0x09, 0x0A, 0x0C)) + b"\x7f"
_HIGH_BYTES = bytes(range(0x80, 0x100))
# A carried run continuing at the start of a slice: more printable bytes, CRs, an LF.
_RUN_PREFIX_RX = re.compile(rb"([\x20-\x7e]*)(\r*)(\n?)")
# Reversed: the CRs and the printable run that end a slice (or precede an LF).
_RUN_TAIL_REV_RX = re.compile(rb"(\r*)([\x20-\x7e]*)")
_CRS_RX = re.compile(rb"\r*")
# Bytes that can end a run (+ CRs) just before an LF: printable ASCII and CR.
_RUNISH = bytes(1 if (0x20 <= b <= 0x7E or b == _CR) else 0 for b in range(256))

# --- states --------------------------------------------------------------------------

_TEXT, _PAYLOAD, _NULTERM = 0, 1, 2
_RESYNC_RESET, _RESYNC_RUN = 1, 2
_FIXED, _VARIABLE = 0, 1
_RECORD_ESC_AMP, _RECORD_FS_Q = 1, 2  # ESC & (x then y*x bytes), FS q (4-byte header)

Scan = tuple[int, int] | None


_Decoder = Callable[[bytes | bytearray, str], tuple[str, int]]


@functools.cache
def _codec_tools(codec: str) -> tuple[_Decoder, str | None]:
    """The codec's decoder, and the 256-character table of a single-byte code page.

    Python's code page codecs are thin Python wrappers around ``codecs.charmap_decode``
    with such a table; calling it directly halves the cost of decoding a line.
    """
    info = codecs.lookup(codec)
    module = sys.modules.get(getattr(info.incrementaldecoder, "__module__", ""))
    table = getattr(module, "decoding_table", None)
    return info.decode, table if isinstance(table, str) and len(table) == 256 else None


def _run_before(data: bytes, lo: int, hi: int) -> tuple[int, int]:
    """(start of the printable run, number of CRs) that end just before ``hi``, not below ``lo``.

    Reads a reversed window that grows geometrically, so it costs O(run), and the
    common case (the byte before an LF is not printable) costs one tiny regex match.
    """
    width = min(hi - lo, 64)
    while True:
        m = _RUN_TAIL_REV_RX.match(data[hi - width : hi][::-1])
        assert m is not None  # both groups may be empty: this always matches
        if m.end() < width or hi - width <= lo:
            break
        width = min(hi - lo, width * 4)
    crs = m.end(1)
    return hi - m.end(2), crs


# --- header measures: (data, i, n) -> header length, 0 = need more, -k = k bytes junk ---


def _const(length: int) -> Callable[[bytes, int, int], int]:
    def measure(data: bytes, i: int, n: int) -> int:
        return length

    return measure


_CUT_NO_ARG = frozenset((0, 1, 48, 49))
_CUT_ONE_ARG = frozenset((65, 66, 97, 98, 103, 104))


def _measure_gs_v(data: bytes, i: int, n: int) -> int:
    if i + 2 >= n:
        return 0
    m = data[i + 2]
    if m in _CUT_NO_ARG:
        return 3
    if m in _CUT_ONE_ARG:
        return 4
    return -2


def _measure_esc_star(data: bytes, i: int, n: int) -> int:
    if i + 2 >= n:
        return 0
    return 5 if data[i + 2] in (0, 1, 32, 33) else -2


def _measure_gs_v0(data: bytes, i: int, n: int) -> int:
    if i + 2 >= n:
        return 0
    if data[i + 2] != 0x30:  # GS v 0 is the only GS v form
        return -2
    if i + 3 >= n:
        return 0
    return 8 if data[i + 3] in (0, 1, 2, 3, 48, 49, 50, 51) else -3


def _measure_gs_8(data: bytes, i: int, n: int) -> int:
    if i + 2 >= n:
        return 0
    return 7 if data[i + 2] == 0x4C else -2  # GS 8 L p1 p2 p3 p4


def _measure_gs_k(data: bytes, i: int, n: int) -> int:
    if i + 2 >= n:
        return 0
    m = data[i + 2]
    if m <= 6:
        return 3
    if 65 <= m <= 79:
        return 4
    return -2


class EscPosTokenizer:
    """Incremental ESC/POS tokenizer for one printer stream (one lane).

    ``feed`` returns the tokens each chunk completes; ``flush`` hands over a partial
    line (idle timeout, EOF); ``reset_state`` starts a new stream (reconnect).

    Cumulative counters, plain int attributes so that the serial adapter can read them
    cheaply (a wrong baud rate shows as garbage and high bytes outgrowing printable):

    - ``printable``: text bytes 0x20-0x7E (and HT) that went into lines, overlong or not;
    - ``high``: text bytes 0x80-0xFF that went into lines;
    - ``garbage``: stray control bytes and unknown or malformed command bytes, dropped;
    - ``line_feeds``: LF/FF seen in text mode (and the LF of a text-run resync).

    ``stats()`` adds the rest (lines, cuts, barcodes, skipped payload, caps, resyncs,
    code page selections).
    """

    __slots__ = (
        "_budget",
        "_buf",
        "_codec",
        "_dec",
        "_default_codec",
        "_done",
        "_esc_tail",
        "_keep",
        "_keep_skip",
        "_line_len",
        "_look",
        "_nul_left",
        "_over",
        "_pay_is_cmd",
        "_pending",
        "_rec_hdr",
        "_rec_hdr_len",
        "_rec_kind",
        "_rec_left",
        "_rec_y",
        "_room",
        "_run_bytes",
        "_run_cr",
        "_run_keep",
        "_run_len",
        "_skip_left",
        "_state",
        "_table",
        "barcodes",
        "capped",
        "codepage_changes",
        "command_bytes",
        "cuts",
        "escpos",
        "garbage",
        "high",
        "line_feeds",
        "lines",
        "max_image",
        "max_line",
        "max_payload",
        "overlong_lines",
        "printable",
        "resync_run",
        "resyncs",
        "skipped",
        "unknown_codepages",
    )
    # Declared here because they are first set in helpers that __init__ calls
    # (_clear_payload, _clear_carry), where mypy would take the first assignment's type.
    _keep: bytearray | None  # the payload bytes kept (a barcode's), None when dropped
    _run_bytes: bytes | None  # a carried run's bytes; None when it outgrew the line
    _esc_tail: bool  # the last payload byte was ESC (ESC @ may follow in the next slice)

    def __init__(
        self,
        encoding: str = "cp437",
        *,
        escpos: bool = True,
        max_line: int = 512,
        max_payload: int = 4096,
        max_image: int = 65536,
        resync_run: int = 16,
    ) -> None:
        codecs.lookup(encoding)  # an unknown encoding fails here, not on the first line
        if max_line < 1 or resync_run < 1 or max_payload < 0 or max_image < 0:
            raise ValueError("max_line and resync_run must be >= 1, caps >= 0")
        self.escpos = escpos
        self.max_line = max_line
        self.max_payload = max_payload
        self.max_image = max_image
        self.resync_run = resync_run
        self._default_codec = encoding
        self._codec = ""  # set by reset_state()
        # cumulative counters
        self.printable = 0
        self.high = 0
        self.garbage = 0
        self.line_feeds = 0
        self.lines = 0
        self.command_bytes = 0
        self.skipped = 0
        self.capped = 0
        self.resyncs = 0
        self.overlong_lines = 0
        self.cuts = 0
        self.barcodes = 0
        self.codepage_changes = 0
        self.unknown_codepages = 0
        # the partial line: bytes in the current code page, text decoded under earlier
        # code pages, total byte length, and whether it is being dropped as overlong
        self._buf = bytearray()
        self._done: list[str] = []
        self._line_len = 0
        self._over = False
        self._rec_hdr = bytearray()
        self._run_keep = bytearray()
        self.reset_state()

    # --- public ----------------------------------------------------------------------

    def reset_state(self) -> None:
        """Forget the partial line and any half-parsed command; back to the default code page.

        For a reconnect: the bytes before it and after it are not one stream. Counters
        are cumulative and stay.
        """
        self._set_codec(self._default_codec)
        self._discard_line()
        self._pending = b""
        self._state = _TEXT
        self._look = False
        self._clear_payload()
        self._clear_carry()

    def feed(self, data: bytes, ts: float) -> list[Token]:
        """Consume one chunk; return the tokens it completed, stamped with ``ts``."""
        out: list[Token] = []
        if type(data) is not bytes:
            data = bytes(data)
        if self._pending:
            data = self._pending + data
            self._pending = b""
        n = len(data)
        i = 0
        # Next position of each command introducer (n: none left). bytes.find is memchr,
        # where a regex character class costs some 9 ns a byte even on a desktop; each
        # is re-run only once parsing has passed its last answer, so a chunk is scanned
        # about once per introducer.
        at_esc = at_gs = at_fs = at_dle = -1 if self.escpos else n
        # Text around commands without arguments that matter (ESC E n, GS ! n, ...) is
        # collected and handled in one go: those commands cannot change a line.
        pieces: list[bytes] = []
        while i < n:
            state = self._state
            if state == _TEXT:
                if self._look:
                    i = self._lookahead(data, i, n, ts, out)
                    continue
                if at_esc < i:
                    at_esc = data.find(b"\x1b", i)
                    if at_esc < 0:
                        at_esc = n
                if at_gs < i:
                    at_gs = data.find(b"\x1d", i)
                    if at_gs < 0:
                        at_gs = n
                if at_fs < i:
                    at_fs = data.find(b"\x1c", i)
                    if at_fs < 0:
                        at_fs = n
                if at_dle < i:
                    at_dle = data.find(b"\x10", i)
                    if at_dle < 0:
                        at_dle = n
                j = min(at_esc, at_gs, at_fs, at_dle)
                if j > i:
                    pieces.append(data[i:j])
                if j == n:
                    break
                if j + 1 < n:
                    entry = _TABLES[data[j]].get(data[j + 1])
                    if type(entry) is int:
                        h = j + 2 + entry
                        if h <= n and (not entry or data.find(_ESC, j + 2, h) < 0):
                            self.command_bytes += h - j
                            i = h
                            continue
                if pieces:
                    self._text(pieces[0] if len(pieces) == 1 else b"".join(pieces), ts, out)
                    pieces.clear()
                i = self._command(data, j, n, ts, out)
            elif state == _PAYLOAD:
                i = self._payload(data, i, n, ts, out)
            else:
                i = self._nulterm(data, i, n, ts, out)
        if pieces:
            self._text(pieces[0] if len(pieces) == 1 else b"".join(pieces), ts, out)
        return out

    def flush(self, ts: float) -> list[Token]:
        """Emit the pending partial line, if any (idle timeout, EOF, disconnect).

        A half-parsed command stays: after an idle gap the stream may simply go on.
        """
        out: list[Token] = []
        self._flush_line(ts, out)
        return out

    @property
    def buffered_bytes(self) -> int:
        """Bytes held now: partial line, retained run, barcode payload, partial headers."""
        keep = len(self._keep) if self._keep is not None else 0
        return len(self._pending) + self._line_len + len(self._run_keep) + keep + len(self._rec_hdr)

    def stats(self) -> dict[str, int]:
        """Cumulative counters.

        ``command_bytes`` counts command introducers, fixed arguments, barcode data and
        tab stops; ``skipped`` counts the bytes of length-prefixed parameters and
        payloads (images, ``GS (`` blocks) that were skipped.
        """
        return {
            "printable": self.printable,
            "high": self.high,
            "garbage": self.garbage,
            "line_feeds": self.line_feeds,
            "lines": self.lines,
            "command_bytes": self.command_bytes,
            "skipped": self.skipped,
            "capped": self.capped,
            "resyncs": self.resyncs,
            "overlong_lines": self.overlong_lines,
            "cuts": self.cuts,
            "barcodes": self.barcodes,
            "codepage_changes": self.codepage_changes,  # ESC t with a known table
            "unknown_codepages": self.unknown_codepages,
        }

    # --- the partial line ------------------------------------------------------------

    def _discard_line(self) -> None:
        self._buf.clear()
        self._done.clear()
        self._line_len = 0
        self._over = False

    def _add(self, b: bytes) -> None:
        if self._over or not b:
            return
        length = self._line_len + len(b)
        if length > self.max_line:
            # dropped whole up to its LF: a truncated line could parse as a wrong price
            self._buf.clear()
            self._done.clear()
            self._line_len = 0
            self._over = True
        else:
            self._buf += b
            self._line_len = length

    def _set_codec(self, codec: str) -> None:
        if codec != self._codec:
            self._codec = codec
            self._dec, self._table = _codec_tools(codec)

    def _decode(self, b: bytes | bytearray) -> str:
        if self._table is not None:
            return _charmap_decode(b, "replace", self._table)[0]
        return self._dec(b, "replace")[0]

    def _end_line(self, ts: float, out: list[Token]) -> None:
        if self._over:
            self.overlong_lines += 1
            self._over = False
            return
        table = self._table
        if table is not None:
            text = _charmap_decode(self._buf, "replace", table)[0]
        else:
            text = self._dec(self._buf, "replace")[0]
        if self._done:
            text = "".join(self._done) + text
            self._done.clear()
        self._buf.clear()
        self._line_len = 0
        out.append(_new_tuple(Line, (text, ts)))
        self.lines += 1

    def _flush_line(self, ts: float, out: list[Token]) -> None:
        if self._over or self._line_len:
            self._end_line(ts, out)

    def _text(self, seg: bytes, ts: float, out: list[Token]) -> None:
        """Text-mode bytes without command introducers: clean, count, split into lines."""
        clean = seg.translate(_TEXT_MAP, _TEXT_DROP)
        size = len(clean)
        if size != len(seg):
            self.garbage += len(seg) - size - seg.count(b"\r")  # CR is dropped, not garbage
            if not size:
                return
        if clean.isascii():
            high = 0
        else:
            high = size - len(clean.translate(None, _HIGH_BYTES))
            self.high += high
        last = clean.rfind(b"\n")
        if last < 0:
            self.printable += size - high
            self._add(clean)
            return
        table = self._table
        if table is None:
            self._text_lines_multibyte(clean, high, ts, out)
            return
        # a single-byte code page: one decode for all complete lines, and one character
        # per byte, so lengths in characters are lengths in bytes
        lines = _charmap_decode(clean[:last], "replace", table)[0].split("\n")
        nl = len(lines)
        self.line_feeds += nl
        self.printable += size - nl - high
        if self._line_len or self._over:
            self._add(clean[: len(lines[0])])
            self._end_line(ts, out)
            del lines[0]
        if lines:
            max_line = self.max_line
            if len(lines) == 1 and len(lines[0]) <= max_line:
                out.append(_new_tuple(Line, (lines[0], ts)))
                self.lines += 1
            elif size <= max_line or max(map(len, lines)) <= max_line:
                # the hot path of a receipt: one tuple per line, no Python-level __new__
                out += [_new_tuple(Line, (text, ts)) for text in lines]
                self.lines += len(lines)
            else:
                for text in lines:
                    if len(text) > max_line:
                        self.overlong_lines += 1
                    else:
                        out.append(Line(text, ts))
                        self.lines += 1
        if last + 1 < size:
            self._add(clean[last + 1 :])

    def _text_lines_multibyte(self, clean: bytes, high: int, ts: float, out: list[Token]) -> None:
        """``_text`` for a codec without a 256-entry table (UTF-8, say): line by line."""
        parts = clean.split(b"\n")
        rest = parts.pop()
        self.line_feeds += len(parts)
        self.printable += len(clean) - len(parts) - high
        self._add(parts[0])
        self._end_line(ts, out)
        for part in parts[1:]:
            if len(part) > self.max_line:
                self.overlong_lines += 1
            else:
                out.append(Line(self._decode(part), ts))
                self.lines += 1
        self._add(rest)

    # --- commands --------------------------------------------------------------------

    def _stash(self, data: bytes, i: int) -> int:
        """Keep an incomplete command header for the next chunk."""
        self._pending = data[i:]
        assert len(self._pending) <= _MAX_HEADER
        return len(data)

    def _command(self, data: bytes, i: int, n: int, ts: float, out: list[Token]) -> int:
        """Parse the command at ``data[i]`` (an introducer); return where text resumes."""
        if i + 1 >= n:
            return self._stash(data, i)
        c = data[i + 1]
        entry = _TABLES[data[i]].get(c)
        if entry is None:
            if data[i] == _DLE or c in _INTRODUCERS:
                # DLE is a command only with EOT/ENQ/DC4; an introducer in second
                # position starts the real command (often the ESC @ after noise)
                self.garbage += 1
                return i + 1
            self.garbage += 2
            return i + 2
        # isinstance, not ``type(entry) is int``: only isinstance narrows the other branch
        # to the tuple for mypy (an entry is never a bool, so both mean the same here).
        if isinstance(entry, int):
            h = 2 + entry
            if i + h > n:
                return self._stash(data, i)
            if entry and data.find(_ESC, i + 2, i + h) >= 0:
                r = self._esc_in_args(data, i, h, n)
                if r is not None:
                    return r
            self.command_bytes += h
            return i + h
        kind, measure, act, intro = entry
        h = measure(data, i, n)
        if h < 0:
            self.garbage -= h  # the bytes before the offending one; it is parsed again
            return i - h
        if h == 0 or i + h > n:
            return self._stash(data, i)
        if kind == _FIXED:
            if h > 2 and data.find(_ESC, i + 2, i + h) >= 0:
                r = self._esc_in_args(data, i, h, n)
                if r is not None:
                    return r
            self.command_bytes += h
            act(self, data, i, ts, out)
            return i + h
        # variable: the parameters after the introducer are watched like payload, so a
        # command that started in noise and eats the start of a text line still lets
        # that line's run resynchronise
        self.command_bytes += intro
        act(self, data, i, ts, out)
        r = self._region(data, i + intro, i + h, ts, out)
        if r >= 0:
            return r
        if self._state == _PAYLOAD and not self._skip_left and not self._rec_left:
            self._finish_payload(ts, out)
        return i + h

    def _esc_in_args(self, data: bytes, i: int, h: int, n: int) -> int | None:
        """An ESC among fixed arguments: ESC @ there resynchronises; None = carry on."""
        k = data.find(_ESC_AT, i + 2, i + h + 1)
        if k >= 0:
            self.garbage += k - i
            self.resyncs += 1
            return k
        if data[i + h - 1] == _ESC and i + h >= n:
            return self._stash(data, i)  # the next byte decides
        return None

    def _do_reset(self, ts: float, out: list[Token]) -> None:
        self._discard_line()  # ESC @ clears the printer's buffer: that text never prints
        self._set_codec(self._default_codec)
        out.append(_new_tuple(Reset, (ts,)))

    def _act_reset(self, data: bytes, i: int, ts: float, out: list[Token]) -> None:
        self._do_reset(ts, out)

    def _act_codepage(self, data: bytes, i: int, ts: float, out: list[Token]) -> None:
        codec = CODE_PAGES.get(data[i + 2])
        if codec is None:
            self.unknown_codepages += 1
            return
        self.codepage_changes += 1
        if codec != self._codec:
            if self._buf:
                self._done.append(self._decode(self._buf))
                self._buf.clear()
            self._set_codec(codec)

    def _act_cut(self, data: bytes, i: int, ts: float, out: list[Token]) -> None:
        self._flush_line(ts, out)
        out.append(_new_tuple(Cut, (ts,)))
        self.cuts += 1

    # --- variable commands: set up the payload state ---------------------------------

    def _start_skip(self, length: int, cap: int) -> None:
        if length > cap:
            self.capped += 1
            length = cap
        self._state = _PAYLOAD
        self._skip_left = length
        self._pay_is_cmd = False
        self._room = self.max_line - self._line_len

    def _act_esc_star(self, data: bytes, i: int, ts: float, out: list[Token]) -> None:
        columns = data[i + 3] + 256 * data[i + 4]
        self._start_skip(columns * (3 if data[i + 2] >= 32 else 1), self.max_image)

    def _act_block(self, data: bytes, i: int, ts: float, out: list[Token]) -> None:
        # GS ( X, FS ( X, ESC ( X: pL pH then that many bytes. GS ( L is graphics (a
        # logo stored in the printer, Epson TM-T88V on): capped like the images.
        is_graphics = data[i] == 0x1D and data[i + 2] == 0x4C
        cap = self.max_image if is_graphics else self.max_payload
        self._start_skip(data[i + 3] + 256 * data[i + 4], cap)

    def _act_gs_v0(self, data: bytes, i: int, ts: float, out: list[Token]) -> None:
        width = data[i + 4] + 256 * data[i + 5]
        height = data[i + 6] + 256 * data[i + 7]
        self._start_skip(width * height, self.max_image)

    def _act_gs_8l(self, data: bytes, i: int, ts: float, out: list[Token]) -> None:
        self._start_skip(int.from_bytes(data[i + 3 : i + 7], "little"), self.max_image)

    def _act_gs_star(self, data: bytes, i: int, ts: float, out: list[Token]) -> None:
        self._start_skip(data[i + 2] * data[i + 3] * 8, self.max_image)

    def _act_fs_2(self, data: bytes, i: int, ts: float, out: list[Token]) -> None:
        self._start_skip(72, self.max_payload)  # one 24x24 user-defined Kanji

    def _act_gs_k(self, data: bytes, i: int, ts: float, out: list[Token]) -> None:
        # a barcode prints on a fresh line (GS k is only accepted at the start of one)
        self._flush_line(ts, out)
        m = data[i + 2]
        if m <= 6:
            self._state = _NULTERM
            self._nul_left = _BARCODE_MAX
            self._keep_skip = 1
        else:
            self._start_skip(data[i + 3], _BARCODE_MAX)
            self._keep_skip = 2
        self._pay_is_cmd = True
        self._keep = bytearray()
        self._room = self.max_line

    def _act_esc_d(self, data: bytes, i: int, ts: float, out: list[Token]) -> None:
        self._state = _NULTERM
        self._nul_left = _TAB_STOPS_MAX
        self._pay_is_cmd = True
        self._room = self.max_line - self._line_len

    def _act_esc_amp(self, data: bytes, i: int, ts: float, out: list[Token]) -> None:
        y, c1, c2 = data[i + 2], data[i + 3], data[i + 4]
        self._start_records(c2 - c1 + 1 if c2 >= c1 else 0, _RECORD_ESC_AMP, self.max_payload)
        self._rec_y = y

    def _act_fs_q(self, data: bytes, i: int, ts: float, out: list[Token]) -> None:
        self._start_records(data[i + 2], _RECORD_FS_Q, self.max_image)

    def _start_records(self, count: int, kind: int, cap: int) -> None:
        self._start_skip(0, cap)
        self._rec_left = count
        self._rec_kind = kind
        self._rec_hdr_len = 1 if kind == _RECORD_ESC_AMP else 4
        self._budget = cap

    # --- payload states --------------------------------------------------------------

    def _clear_payload(self) -> None:
        self._skip_left = 0
        self._rec_left = 0
        self._rec_kind = 0
        self._rec_hdr_len = 0
        self._rec_y = 0
        self._rec_hdr.clear()
        self._budget = 0
        self._nul_left = 0
        self._keep = None
        self._keep_skip = 0
        self._pay_is_cmd = False
        self._room = self.max_line

    def _payload(self, data: bytes, i: int, n: int, ts: float, out: list[Token]) -> int:
        """Counted payload (and ESC & / FS q records); return where parsing resumes."""
        while True:
            if self._skip_left:
                if i >= n:
                    return i
                e = min(n, i + self._skip_left)
                r = self._region(data, i, e, ts, out)
                if r >= 0:
                    return r
                self._skip_left -= e - i
                i = e
            elif self._rec_left:
                if i >= n:
                    return i
                e = min(n, i + self._rec_hdr_len - len(self._rec_hdr))
                r = self._region(data, i, e, ts, out)
                if r >= 0:
                    return r
                self._rec_hdr += data[i:e]
                i = e
                if len(self._rec_hdr) == self._rec_hdr_len:
                    self._next_record()
            else:
                self._finish_payload(ts, out)
                return i

    def _next_record(self) -> None:
        h = self._rec_hdr
        if self._rec_kind == _RECORD_ESC_AMP:
            size = self._rec_y * h[0]
        else:
            size = (h[0] + 256 * h[1]) * (h[2] + 256 * h[3]) * 8
        h.clear()
        self._rec_left -= 1
        if size > self._budget:
            self.capped += 1
            size = self._budget
            self._rec_left = 0
        self._budget -= size
        self._skip_left = size

    def _finish_payload(self, ts: float, out: list[Token]) -> None:
        if self._keep is not None:  # GS k form B, complete
            self._emit_barcode(ts, out)
            self._drop_carry()
            self._clear_payload()
            self._state = _TEXT
        else:
            self._exit_with_lookahead()

    def _nulterm(self, data: bytes, i: int, n: int, ts: float, out: list[Token]) -> int:
        """NUL-terminated data (GS k form A, ESC D) with a byte budget."""
        z = data.find(_NUL, i, min(n, i + self._nul_left + 1))
        e = z if z >= 0 else min(n, i + self._nul_left)
        if e > i:
            r = self._region(data, i, e, ts, out)
            if r >= 0:
                return r
            self._nul_left -= e - i
            i = e
        if z >= 0:
            self._drop_carry()
            self._account(1)
            if self._keep is not None:
                self._emit_barcode(ts, out)
            self._clear_payload()
            self._state = _TEXT
            return z + 1
        if self._nul_left == 0 and i < n:
            self.capped += 1  # no NUL within the limit: the printer goes back to text
            self._exit_with_lookahead()
        return i

    def _emit_barcode(self, ts: float, out: list[Token]) -> None:
        assert self._keep is not None
        out.append(Barcode(self._keep[self._keep_skip :].decode("ascii", "replace"), ts))
        self.barcodes += 1

    def _exit_with_lookahead(self) -> None:
        """Payload over without a resync: a run at its very end may still meet an LF."""
        if self._keep is not None:
            run = self._carried_run()
            self._run_keep[:] = run if run is not None else b""
        self._clear_payload_keep_room()
        self._state = _TEXT
        if self._esc_tail or self._run_len >= self.resync_run:
            self._look = True
        else:
            self._drop_carry()

    def _clear_payload_keep_room(self) -> None:
        room, is_cmd = self._room, self._pay_is_cmd
        self._clear_payload()
        self._room, self._pay_is_cmd = room, is_cmd

    def _lookahead(self, data: bytes, i: int, n: int, ts: float, out: list[Token]) -> int:
        """The first text bytes after a payload that ended in ESC or in a long run."""
        if self._esc_tail:
            self._look = False
            self._esc_tail = False
            if data[i] == _AT:
                self.resyncs += 1
                self.command_bytes += 2
                self._do_reset(ts, out)
                return i + 1
            self._account(1)
            return i
        m = _CRS_RX.match(data, i, n)
        assert m is not None
        j = m.end()
        if j == n:
            return n
        self._look = False
        if data[j] == _LF:
            self.resyncs += 1
            self.line_feeds += 1
            self._run_bytes = self._carried_run()
            self._emit_run(ts, out)
            return j + 1
        self._drop_carry()
        return j

    def _region(self, data: bytes, s: int, e: int, ts: float, out: list[Token]) -> int:
        """Consume payload bytes ``data[s:e]``; -1, or where text resumes after a resync."""
        r = self._scan(data, s, e)
        if r is not None:
            kind, at = r
            self.resyncs += 1
            if kind == _RESYNC_RESET:
                self.command_bytes += 2
                self._do_reset(ts, out)
            else:
                self.line_feeds += 1
                self._emit_run(ts, out)
            self._clear_payload()
            self._state = _TEXT
            return at + 1
        if self._keep is not None:
            self._keep += data[s:e]
        return -1

    # --- the resync watch over payload bytes -----------------------------------------
    #
    # Carried across slices: ``_esc_tail`` (the last payload byte was ESC) or a trailing
    # printable run (``_run_len`` bytes, then ``_run_cr`` CRs). Those bytes are not yet
    # counted in ``skipped``: they may turn out to be a Reset or a line. The run's bytes
    # are kept in ``_run_keep`` (or found at the end of ``_keep`` for barcodes) only
    # while it fits ``_room``, so that partial line + run never exceed ``max_line``.

    def _clear_carry(self) -> None:
        self._esc_tail = False
        self._run_len = 0
        self._run_cr = 0
        self._run_keep.clear()
        self._run_bytes = None

    def _account(self, count: int) -> None:
        if self._pay_is_cmd:
            self.command_bytes += count
        else:
            self.skipped += count

    def _drop_carry(self) -> None:
        self._account(self._run_len + self._run_cr + self._esc_tail)
        self._clear_carry()

    def _carried_run(self) -> bytes | None:
        if self._run_len > self._room:
            return None
        if self._keep is None:
            return bytes(self._run_keep)
        end = len(self._keep) - self._run_cr
        return bytes(self._keep[end - self._run_len : end])

    def _emit_run(self, ts: float, out: list[Token]) -> None:
        """A text run ended by LF resynchronised: it replaces the partial line."""
        self._discard_line()
        self.printable += self._run_len
        if self._run_bytes is None:
            self.overlong_lines += 1
        else:
            out.append(Line(self._decode(self._run_bytes), ts))
            self.lines += 1
        self._clear_carry()

    def _scan(self, data: bytes, s: int, e: int) -> Scan:
        """Watch payload bytes ``data[s:e]`` for ESC @ or a printable run + CRs + LF.

        Returns None (all consumed; the carry is updated) or (kind, index of the last
        byte of the resync: the '@' or the LF).
        """
        if s >= e:
            return None
        p = s
        if self._esc_tail:
            self._esc_tail = False
            if data[s] == _AT:
                return (_RESYNC_RESET, s)
            self._account(1)
        elif self._run_len:
            m = _RUN_PREFIX_RX.match(data, s, e)
            assert m is not None
            b, c = m.end(1), m.end(2)
            lf = m.end(3) > c
            if self._run_cr and b > s:
                self._drop_carry()  # CRs then more text: the old run ended at the CRs
            elif lf and self._run_len + b - s >= self.resync_run:
                run = self._carried_run()
                self._run_len += b - s
                self._run_cr += c - b
                if run is None or self._run_len > self._room:
                    self._run_bytes = None
                else:
                    self._run_bytes = run + data[s:b]
                return (_RESYNC_RUN, c)
            elif not lf and c == e:
                self._run_len += b - s
                self._run_cr += c - b
                if self._keep is None:
                    if self._run_len <= self._room:
                        self._run_keep += data[s:b]
                    else:
                        self._run_keep.clear()
                return None
            else:
                self._account(self._run_len + self._run_cr + c - s)
                self._clear_carry()
                p = c
        if p >= e:
            return None
        k = data.find(_ESC_AT, p, e)
        limit = k if k >= 0 else e
        q = p
        runish = _RUNISH
        while True:
            lf_at = data.find(b"\n", q, limit)
            if lf_at < 0:
                break
            if lf_at > p and runish[data[lf_at - 1]]:
                start, crs = _run_before(data, p, lf_at)
                run_len = lf_at - crs - start
                if run_len >= self.resync_run:
                    self._account(start - p)
                    self._run_len = run_len
                    self._run_cr = crs
                    self._run_bytes = (
                        data[start : start + run_len] if run_len <= self._room else None
                    )
                    return (_RESYNC_RUN, lf_at)
            q = lf_at + 1
        if k >= 0:
            self._account(k - p)
            return (_RESYNC_RESET, k + 1)
        last = data[e - 1]
        if last == _ESC:
            self._account(e - 1 - p)
            self._esc_tail = True
            return None
        if runish[last]:
            start, crs = _run_before(data, p, e)
            run_len = e - crs - start
            if run_len:
                self._account(start - p)
                self._run_len = run_len
                self._run_cr = crs
                if self._keep is None and run_len <= self._room:
                    self._run_keep[:] = data[start : start + run_len]
                return None
        self._account(e - p)
        return None


# --- command tables ------------------------------------------------------------------
#
# second byte -> int (fixed argument count) or (kind, measure, action, introducer length).
# _FIXED actions run once the whole command is in; _VARIABLE actions set up a payload
# state, and the bytes after the introducer are watched for resyncs like payload.

_Action = Callable[..., None]
_Entry = int | tuple[int, Callable[[bytes, int, int], int], _Action, int]

_ESC_TABLE: dict[int, _Entry] = {
    0x0C: 0,  # FF: print in page mode
    0x20: 1,  # SP n: right-side character spacing
    0x21: 1,  # ! n: print mode
    0x24: 2,  # $ nL nH: absolute position
    0x25: 1,  # % n: user-defined character set
    0x26: (_VARIABLE, _const(5), EscPosTokenizer._act_esc_amp, 2),  # & y c1 c2 [x d..]
    0x28: (_VARIABLE, _const(5), EscPosTokenizer._act_block, 2),  # ( X pL pH d..
    0x2A: (_VARIABLE, _measure_esc_star, EscPosTokenizer._act_esc_star, 2),  # * m nL nH
    0x2D: 1,  # - n: underline
    0x32: 0,  # 2: default line spacing
    0x33: 1,  # 3 n: line spacing
    0x3C: 0,  # <: return home
    0x3D: 1,  # = n: peripheral device
    0x3F: 1,  # ? n: cancel user-defined character
    0x40: (_FIXED, _const(2), EscPosTokenizer._act_reset, 2),  # @: initialize
    0x44: (_VARIABLE, _const(2), EscPosTokenizer._act_esc_d, 2),  # D n.. NUL: tab stops
    0x45: 1,  # E n: emphasis
    0x47: 1,  # G n: double strike
    0x4A: 1,  # J n: print and feed
    0x4B: 1,  # K n: print and reverse feed
    0x4C: 0,  # L: page mode
    0x4D: 1,  # M n: font
    0x52: 1,  # R n: international character set
    0x53: 0,  # S: standard mode
    0x54: 1,  # T n: print direction in page mode
    0x55: 1,  # U n: unidirectional printing
    0x56: 1,  # V n: 90 degree rotation
    0x57: 8,  # W xL xH yL yH dxL dxH dyL dyH: print area in page mode
    0x5C: 2,  # \ nL nH: relative position
    0x61: 1,  # a n: justification
    0x63: 2,  # c 3/4/5/0/1 n: paper sensors, panel buttons
    0x64: 1,  # d n: print and feed n lines
    0x65: 1,  # e n: print and reverse feed n lines
    0x69: (_FIXED, _const(2), EscPosTokenizer._act_cut, 2),  # i: partial cut
    0x6D: (_FIXED, _const(2), EscPosTokenizer._act_cut, 2),  # m: partial cut
    0x70: 3,  # p m t1 t2: drawer kick
    0x72: 1,  # r n: print colour
    0x74: (_FIXED, _const(3), EscPosTokenizer._act_codepage, 2),  # t n: code page
    0x75: 1,  # u n: peripheral status
    0x76: 0,  # v: paper sensor status
    0x7B: 1,  # { n: upside-down
}

_GS_TABLE: dict[int, _Entry] = {
    0x21: 1,  # ! n: character size
    0x24: 2,  # $ nL nH: absolute vertical position in page mode
    0x28: (_VARIABLE, _const(5), EscPosTokenizer._act_block, 2),  # ( X pL pH d..
    0x2A: (_VARIABLE, _const(4), EscPosTokenizer._act_gs_star, 2),  # * x y d..
    0x2F: 1,  # / m: print downloaded bit image
    0x38: (_VARIABLE, _measure_gs_8, EscPosTokenizer._act_gs_8l, 3),  # 8 L p1..p4 d..
    0x3A: 0,  # :: start/end macro definition
    0x42: 1,  # B n: reverse
    0x45: 1,  # E n: print density (older models)
    0x48: 1,  # H n: HRI position
    0x49: 1,  # I n: printer id
    0x4C: 2,  # L nL nH: left margin
    0x50: 2,  # P x y: motion units
    0x56: (_FIXED, _measure_gs_v, EscPosTokenizer._act_cut, 2),  # V m [n]: cut
    0x57: 2,  # W nL nH: print area width
    0x5C: 2,  # \ nL nH: relative vertical position in page mode
    0x5E: 3,  # ^ r t m: execute macro
    0x61: 1,  # a n: automatic status back
    0x62: 1,  # b n: smoothing
    0x66: 1,  # f n: HRI font
    0x67: 4,  # g 0/2 m nL nH: maintenance counters
    0x68: 1,  # h n: barcode height
    0x6A: 1,  # j n: automatic ink status back
    0x6B: (_VARIABLE, _measure_gs_k, EscPosTokenizer._act_gs_k, 2),  # k m ..: barcode
    0x72: 1,  # r n: status
    0x76: (_VARIABLE, _measure_gs_v0, EscPosTokenizer._act_gs_v0, 3),  # v 0 m x y d..
    0x77: 1,  # w n: barcode module width
    0x7A: 3,  # z 0 t1 t2: online recovery wait
}

_FS_TABLE: dict[int, _Entry] = {
    0x21: 1,  # ! n: Kanji print mode
    0x26: 0,  # &: Kanji mode on
    0x28: (_VARIABLE, _const(5), EscPosTokenizer._act_block, 2),  # ( X pL pH d..
    0x2D: 1,  # - n: Kanji underline
    0x2E: 0,  # .: Kanji mode off
    0x32: (_VARIABLE, _const(4), EscPosTokenizer._act_fs_2, 2),  # 2 c1 c2 d1..d72
    0x3F: 2,  # ? c1 c2: cancel user-defined Kanji
    0x43: 1,  # C n: Kanji code system
    0x53: 2,  # S n1 n2: Kanji spacing
    0x57: 1,  # W n: Kanji quadruple size
    0x70: 2,  # p n m: print NV bit image
    0x71: (_VARIABLE, _const(3), EscPosTokenizer._act_fs_q, 2),  # q n [xL xH yL yH d..]
}

_DLE_TABLE: dict[int, _Entry] = {
    0x04: 1,  # EOT n: real-time status
    0x05: 1,  # ENQ n: real-time request
    0x14: 3,  # DC4 fn m t: real-time pulse / power off / clear buffer
}

_TABLES: dict[int, dict[int, _Entry]] = {
    _ESC: _ESC_TABLE,
    _GS: _GS_TABLE,
    _FS: _FS_TABLE,
    _DLE: _DLE_TABLE,
}
