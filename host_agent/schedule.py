"""Which chunk of a tensor each use of each slot carries: the one schedule both engines follow."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from netagg.protocol import ROOT_ALL, Coll, ReduceOp, op_field

__all__ = ["ALLREDUCE", "Collective", "Schedule"]


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
    shard: int = 0
    """Elements per shard (reduce-scatter, all-gather: docs/protocol.md "Collectives"), each cut into
    ``per_shard`` chunks of ``elements`` but a shorter last one, so that no chunk straddles two
    shards; 0: one tensor."""
    per_shard: int = 0

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

    @classmethod
    def sharded(cls, shards: int, shard: int, elements: int, slots: int, is_float: bool) -> Schedule:
        """``shards`` shards of ``shard`` elements in packets of at most ``elements``: each shard in
        k = ceil(shard / elements) chunks of ceil(shard / k) (its last chunk shorter)."""
        k = max(1, -(-shard // elements))
        per = max(1, -(-shard // k))
        nchunks = shards * k
        return cls(shards * shard, per, min(slots, nchunks), 1 if is_float else 0, nchunks, 0, 0, shard, k)

    def offset(self, c: int) -> int:
        """Where chunk ``c`` starts in the tensor."""
        if not self.shard:
            return c * self.elements
        return (c // self.per_shard) * self.shard + (c % self.per_shard) * self.elements

    def uses(self) -> list[int]:
        """Uses of each slot in this call (its chunks, plus the exponent-only use of a float call)."""
        w, nc = self.window, self.nchunks
        return [(nc - j + w - 1) // w + self.boot for j in range(w)]

    def chunk(self, j: int, k: int) -> int:
        """The chunk use ``k`` of slot ``j`` carries (-1: the exponent-only use)."""
        return -1 if k < self.boot else j + (k - self.boot) * self.window

    def count(self, c: int) -> int:
        """Elements in chunk ``c`` (0 for -1)."""
        if c < 0:
            return 0
        if self.shard:
            k = self.per_shard
            return self.elements if c % k < k - 1 else self.shard - (k - 1) * self.elements
        return self.elements if c < self.nfull else self.total - c * self.elements

    def chunks(self, js: np.ndarray, ks: np.ndarray) -> np.ndarray:
        """:meth:`chunk` over arrays."""
        return np.where(ks < self.boot, -1, js + (ks - self.boot) * self.window)

    def counts(self, cs: np.ndarray) -> np.ndarray:
        """:meth:`count` over arrays."""
        if self.shard:
            k = self.per_shard
            last = np.where(cs % k < k - 1, self.elements, self.shard - (k - 1) * self.elements)
            return np.where(cs < 0, 0, last)
        return np.where(cs < 0, 0, np.where(cs < self.nfull, self.elements, self.tail))


@dataclass(frozen=True, slots=True)
class Collective:
    """Which collective a call is, and what that means chunk by chunk (docs/protocol.md, "Collectives"):
    the ``op`` field of each use, whether this worker sends a payload and whether it gets one."""

    coll: int = Coll.allreduce
    reduce: int = ReduceOp.sum
    rank: int = 0
    """This worker's rank (whose shard, or whether it is the root)."""
    root: int = 0
    """A broadcast's root."""
    per_shard: int = 0
    """Chunks per shard (reduce-scatter, all-gather): chunk ``c`` belongs to rank ``c // per_shard``."""

    @property
    def plain(self) -> bool:
        """An allreduce: every use has the same op field, sends and gets a payload."""
        return self.coll == Coll.allreduce

    def owner(self, c: int) -> int:
        return c // self.per_shard if self.per_shard else self.root

    def op(self, c: int) -> int:
        """The op field of the use that carries chunk ``c`` (-1: the exponent-only use)."""
        if c < 0 or self.coll in (Coll.allreduce, Coll.barrier):
            return op_field(self.coll, self.reduce, ROOT_ALL if self.coll == Coll.reduce_scatter else 0)
        return op_field(self.coll, self.reduce, self.owner(c))

    def sends(self, c: int) -> bool:
        """Whether this worker's contribution to chunk ``c`` carries a payload (else EMPTY)."""
        if self.coll in (Coll.all_gather, Coll.broadcast):
            return c >= 0 and self.owner(c) == self.rank
        return True

    def receives(self, c: int) -> bool:
        """Whether this worker gets chunk ``c``'s result with its payload."""
        return self.coll != Coll.reduce_scatter or c < 0 or self.owner(c) == self.rank


ALLREDUCE = Collective()
