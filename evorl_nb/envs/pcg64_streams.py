"""numpy's ``Generator(PCG64)`` streams of many envs, read ahead as arrays of 32-bit words.

The batched MiniGrid (:mod:`evorl_nb.envs.vec_minigrid`) draws each slot's random numbers
from what would have been that slot's env ``np_random``, so layouts and obstacle moves
come out exactly as minigrid's.  numpy's ``Generator(PCG64)`` (a 128-bit LCG with the
XSL-RR output) is drawn 32 bits at a time with the other half buffered, and bounded draws
use Lemire's multiply-shift.  :class:`PCGStreams` reproduces that in uint64 arrays, the
next block of outputs of every slot precomputed with PCG's jump-ahead, so a rejection-
sampling loop can read a round of tries for all slots at once.  :class:`SlotDraws` reads
one slot's words in plain Python.  A word numpy would reject and redraw (Lemire;
probability ~2**-31 per draw) is never guessed at: callers hand that slot to numpy's own
``Generator.integers`` on the same state (see :meth:`PCGStreams.get` / :meth:`PCGStreams.set`).
"""

from __future__ import annotations

import sys

import numpy as np

LO32 = np.uint64(0xFFFFFFFF)
U32 = np.uint64(32)


def lemire_threshold(r: np.ndarray) -> np.ndarray:
    """numpy's rejection threshold ``(2**32 - r) % r`` for a bounded draw in [0, r)."""
    r = r.astype(np.uint64)
    return (np.uint64(1 << 32) - r) % r


class PCGStreams:
    """The 32-bit draw streams of ``n`` numpy ``Generator(PCG64)`` objects, read ahead.

    numpy draws 32 bits at a time as the low then the high half of each 64-bit output,
    keeping the unused half (``has_uint32`` / ``uinteger``).  Each stream has its own
    ``PCG64`` bit generator that produces its next ``k`` outputs at once (``random_raw``),
    laid out as 32-bit words: ``words[i, 2 + 2j]`` / ``words[i, 3 + 2j]`` the low / high
    half of output ``j``, ``words[i, 1]`` the half buffered before the block (if any), and
    ``pos[i]`` the next word to draw.  Drawing is reading words and moving ``pos``;
    :meth:`refill` rewinds the bit generator to the current position (PCG's jump-ahead, by
    a negative amount) and reads the next block.  :meth:`get` gives the state numpy's own
    generator would have after the words read so far.
    """

    def __init__(self, n: int, k: int = 512):
        self.k = k
        self.width = 2 * k + 2
        self.words = np.zeros((n, self.width), np.uint64)
        self.flat_words = self.words.reshape(-1)
        self.pos = np.full(n, self.width, np.int64)
        self.bitgens = [np.random.PCG64(0) for _ in range(n)]  # at the end of each block
        self._scratch = np.random.PCG64(0)
        self._little = sys.byteorder == "little"

    def set(self, i: int, st: dict) -> None:
        """Continue stream ``i`` from a ``bit_generator.state`` dict."""
        if st["bit_generator"] != "PCG64":
            raise NotImplementedError(f"generator is {st['bit_generator']}, not PCG64")
        self.bitgens[i].state = {"bit_generator": "PCG64", "state": dict(st["state"]),
                                 "has_uint32": 0, "uinteger": 0}
        # an empty block (refilled at the next draw), keeping a buffered half if any
        if st["has_uint32"]:
            self.words[i, self.width - 1] = int(st["uinteger"])
            self.pos[i] = self.width - 1
        else:
            self.pos[i] = self.width

    def get(self, i: int) -> dict:
        """Stream ``i``'s current ``bit_generator.state`` dict."""
        q = int(self.pos[i])
        behind = self.k - (q - 1) // 2  # outputs of the block not drawn yet
        st = self.bitgens[i].state
        if behind:
            self._scratch.state = st
            self._scratch.advance((1 << 128) - behind)
            st = self._scratch.state
        has32 = q & 1
        return {"bit_generator": "PCG64", "state": dict(st["state"]), "has_uint32": has32,
                "uinteger": int(self.words[i, q]) if has32 else 0}

    def refill(self, e: np.ndarray) -> None:
        """Start a fresh block for streams ``e`` at their current positions."""
        k, words = self.k, self.words
        for i in e.tolist():
            q = int(self.pos[i])
            bg = self.bitgens[i]
            behind = k - (q - 1) // 2
            if behind:
                bg.advance((1 << 128) - behind)
            row = words[i]
            if q & 1:
                row[1] = row[q]
            raw = bg.random_raw(k)
            if self._little:
                row[2:] = raw.view(np.uint32)
            else:
                row[2::2] = raw & LO32
                row[3::2] = raw >> U32
            self.pos[i] = 1 if q & 1 else 2

    def ensure(self, e: np.ndarray, need: int) -> None:
        """Refill the streams in ``e`` that have fewer than ``need`` words left."""
        short = self.pos[e] + need > self.width
        if short.any():
            self.refill(e[short])


class StreamFallback(Exception):
    """:class:`SlotDraws` met a draw it leaves to numpy (a Lemire redraw, or the block ran
    out); nothing it read is committed, so the caller reruns from the same state."""


class SlotDraws:
    """``np_random.integers`` for one slot, read from its precomputed stream words.

    Raises :class:`StreamFallback` (nothing consumed is committed) where numpy would reject
    a word and redraw (Lemire) or the block runs out; the caller then runs the env's own
    generator from the same state.  After a run that did not fall back, ``pos`` is the
    slot's new position in the block."""

    __slots__ = ("words", "pos", "end")

    def __init__(self, words: np.ndarray, pos: int):
        self.words, self.pos, self.end = words, pos, len(words)

    def integers(self, low: int, high: int) -> int:
        """What ``np_random.integers(low, high)`` returns, drawn from the words."""
        r = high - low
        if r == 1:
            return low  # numpy draws nothing for a single value
        if self.pos >= self.end:
            raise StreamFallback
        m = self.words.item(self.pos) * r
        self.pos += 1
        if (m & 0xFFFFFFFF) < (1 << 32) % r:
            raise StreamFallback
        return low + (m >> 32)
