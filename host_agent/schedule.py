"""Which chunk of a tensor each use of each slot carries: the one schedule both engines follow."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Schedule"]


@dataclass(frozen=True, slots=True)
class Schedule:
    """Which chunk each use of each slot carries, for one call of ``total`` elements.

    The tensor is cut into chunks of ``elements``; chunk ``c`` travels in slot ``c % window`` (of the
    job's slots, relative to its first) as that slot's use ``boot + c // window``. A float call starts
    every slot with one exponent-only use (``boot`` = 1): it proposes the block exponent of the slot's
    first chunk; each RESULT carries the exponent agreed for the slot's next chunk.
    """

    total: int
    elements: int
    window: int
    boot: int
    nchunks: int
    """Chunks of the call (the last may be short)."""
    nfull: int
    """Chunks of exactly ``elements`` (all but a short last one)."""
    tail: int
    """Elements of the short last chunk (0 if there is none)."""

    @classmethod
    def of(cls, total: int, elements: int, slots: int, is_float: bool) -> Schedule:
        nchunks, nfull = -(-total // elements), total // elements
        return cls(
            total,
            elements,
            min(slots, nchunks),
            1 if is_float else 0,
            nchunks,
            nfull,
            total - nfull * elements,
        )

    def uses(self) -> list[int]:
        """Uses of each slot in this call (its chunks, plus the exponent-only use of a float call)."""
        w, nc = self.window, self.nchunks
        return [(nc - j + w - 1) // w + self.boot for j in range(w)]

    def chunk(self, j: int, k: int) -> int:
        """The chunk use ``k`` of slot ``j`` carries (-1: the exponent-only use)."""
        return -1 if k < self.boot else j + (k - self.boot) * self.window

    def count(self, c: int) -> int:
        """Elements in chunk ``c`` (0 for -1)."""
        return 0 if c < 0 else (self.elements if c < self.nfull else self.total - c * self.elements)

    def chunks(self, js: np.ndarray, ks: np.ndarray) -> np.ndarray:
        """:meth:`chunk` over arrays."""
        return np.where(ks < self.boot, -1, js + (ks - self.boot) * self.window)

    def counts(self, cs: np.ndarray) -> np.ndarray:
        """:meth:`count` over arrays."""
        return np.where(cs < 0, 0, np.where(cs < self.nfull, self.elements, self.tail))
