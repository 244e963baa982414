"""What a UART set to the wrong baud rate delivers: honest garbage for wrong-baud tests.

ptys ignore baud and parity, so a lane configured at the wrong rate cannot be
produced with a pty alone; ``misread`` computes the bytes such a lane would
read instead, and the test writes those through the pty.

The model:

- **Sender** (8N1 at ``sent_baud``): each byte is a 10-bit frame, a start bit
  (0), the eight data bits least significant first, a stop bit (1). The line
  idles high between frames for a small random gap (0 to ``max_gap_bits`` bit
  times; a printer fed by POS software rarely sends back to back), and stays
  high after the last frame.
- **Receiver** (8N1 at ``read_baud``): idle, it waits for a falling edge (a
  high-to-low transition; a line that is already low does not start a frame).
  It notices the edge up to 1/16 of its bit time late, as a 16550-style UART
  oversampling at 16x does; that jitter also settles samples that would fall
  exactly on one of the sender's edges (as at half the baud rate). It samples
  the middle of the start bit and abandons a glitch that is high again there,
  then the middle of each data bit, then the stop bit. A stop bit sampled low
  is a framing error, and the byte is still delivered as sampled: Linux does so
  when INPCK is off, which pyserial sets for parity N (with INPCK on it would
  deliver NUL; with PARMRK, a marked sequence). After the stop-bit sample it
  hunts for the next falling edge.

Not modelled: noise, clock drift within a frame, parity, and a break's special
handling (a frame of all zeroes comes out as 0x00, which Linux also delivers
for a break with BRKINT and IGNBRK off).
"""

from __future__ import annotations

import bisect
import random

# How late the receiver notices a falling edge, at most, in its own bit times: a UART
# oversampling at 16x detects the edge at the next tick of its 16x clock.
EDGE_DETECT_LATENCY_BITS = 1 / 16
# Bits in an 8N1 frame: start, eight data bits, stop.
FRAME_BITS = 10


def frame_8n1(data: bytes, baud: int, *, max_gap_bits: float = 1.0, seed: int = 0) -> list[float]:
    """The sender's line as the times (seconds) of its level changes, high at t=0.

    Even indexes are falling edges (high to low), odd ones rising edges, so the
    line is low between ``edges[2k]`` and ``edges[2k+1]`` and high elsewhere.
    """
    rng = random.Random(seed)
    bit_s = 1.0 / baud
    edges: list[float] = []
    level = 1
    t = 0.0
    for byte in data:
        t += rng.uniform(0.0, max_gap_bits) * bit_s
        bits = [0] + [(byte >> i) & 1 for i in range(8)] + [1]
        for bit in bits:
            if bit != level:
                edges.append(t)
                level = bit
            t += bit_s
    return edges


def _level_at(edges: list[float], t: float) -> int:
    """The line level at time ``t``: high before the first edge and after an even count."""
    return 1 if bisect.bisect_right(edges, t) % 2 == 0 else 0


def _next_falling_edge(edges: list[float], after: float) -> float | None:
    """The first high-to-low transition strictly after ``after``, or None."""
    i = bisect.bisect_right(edges, after)
    if i % 2:  # an odd index is a rising edge: the next falling one follows it
        i += 1
    return edges[i] if i < len(edges) else None


def sample_8n1(edges: list[float], baud: int, *, seed: int = 0) -> bytes:
    """What a receiver at ``baud`` reads from the line described by ``edges``."""
    rng = random.Random(seed)
    bit_s = 1.0 / baud
    out = bytearray()
    t = -1.0
    while True:
        edge = _next_falling_edge(edges, t)
        if edge is None:
            return bytes(out)
        start = edge + rng.uniform(0.0, EDGE_DETECT_LATENCY_BITS) * bit_s
        if _level_at(edges, start + 0.5 * bit_s) == 1:
            t = start + 0.5 * bit_s  # a glitch, not a start bit
            continue
        value = 0
        for i in range(8):
            value |= _level_at(edges, start + (1.5 + i) * bit_s) << i
        # The stop bit is checked but a framing error still delivers the byte.
        t = start + (FRAME_BITS - 0.5) * bit_s
        out.append(value)


def misread(
    data: bytes, sent_baud: int, read_baud: int, *, seed: int = 0, max_gap_bits: float = 1.0
) -> bytes:
    """The bytes a UART at ``read_baud`` delivers for ``data`` sent 8N1 at ``sent_baud``.

    With equal rates the result is ``data`` itself. Deterministic for a given ``seed``.
    """
    edges = frame_8n1(data, sent_baud, max_gap_bits=max_gap_bits, seed=seed)
    return sample_8n1(edges, read_baud, seed=seed + 1)
