"""The collectives of protocol version 2 on a :class:`host_agent.Worker` (docs/protocol.md,
"Collectives"): allreduce with sum, max or min, reduce-scatter, all-gather, broadcast and barrier, each
with an ``_async`` variant. Each call is laid out here (shards cut into chunks of their own, max and min in
the ordered encoding, gathered data as opaque words) and run by the worker's one engine loop; the
engine knows the collective only through :class:`host_agent.schedule.Collective`."""

from __future__ import annotations

import concurrent.futures
from typing import Any

import numpy as np

from host_agent.errors import NetAggError
from host_agent.schedule import Collective, Schedule
from host_agent.tensors import as_bytes, as_numpy, bytes_view, from_bytes, like, output_for
from netagg.protocol import Coll, ReduceOp

__all__ = ["Collectives", "decode_ordered", "encode_ordered"]

_OPS = {"sum": ReduceOp.sum, "max": ReduceOp.max, "min": ReduceOp.min}
#: Quiet NaNs that order above +inf (max) and below -inf (min) in the ordered encoding.
_NAN_FOR = {ReduceOp.max: np.int32(0x7FC00000), ReduceOp.min: np.int32(-0x400000)}  # 0xFFC00000


def encode_ordered(a: np.ndarray, reduce: ReduceOp) -> np.ndarray:
    """float32 -> int32 whose signed order is the floats' order (bits 0-30 inverted where the sign bit
    is set), with NaNs made the quiet NaN that wins under ``reduce``."""
    b = a.view(np.int32).copy()
    nan = np.isnan(a)
    if nan.any():
        b[nan] = _NAN_FOR[reduce]
    b ^= (b >> 31) & 0x7FFFFFFF
    return b


def decode_ordered(b: np.ndarray) -> np.ndarray:
    """The inverse of :func:`encode_ordered` (the same bit flip): int32 -> float32."""
    return (b ^ ((b >> 31) & 0x7FFFFFFF)).view(np.float32)


def _reduce_of(op: str) -> ReduceOp:
    try:
        return _OPS[op]
    except KeyError:
        raise ValueError(f"op must be 'sum', 'max' or 'min', got {op!r}") from None


class Collectives:
    """Mixed into :class:`host_agent.Worker`: the public collectives, each queued on its I/O thread."""

    rank: int
    world_size: int
    _broken: str | None
    _executor: concurrent.futures.ThreadPoolExecutor

    def _run(
        self,
        flat: np.ndarray,
        out: np.ndarray | None = None,
        factor: float = 1.0,
        call: Collective | None = None,
        schedule: Schedule | None = None,
    ) -> np.ndarray:
        raise NotImplementedError

    @property
    def elements(self) -> int:
        raise NotImplementedError

    def _submit(self, fn: Any) -> concurrent.futures.Future[Any]:
        if self._broken:
            raise NetAggError(self._broken)
        return self._executor.submit(fn)

    # -- allreduce ---------------------------------------------------------------------------------
    def allreduce(self, x: Any, out: Any = None, *, op: str = "sum", average: bool = False) -> Any:
        """Elementwise reduction (``op``: "sum", "max" or "min") of ``x`` over every worker of the job;
        same type, dtype and shape as ``x``.

        ``x`` is a numpy array or torch tensor of float32, bfloat16 or float16 (a sum is quantized,
        error within the bound of docs/protocol.md, and rounded once to the dtype) or int32 (exact; a
        sum wraps on overflow like any int32 sum); max and min are exact for every dtype. float64 is
        refused (it would be narrowed); a Python list of floats is taken as float32. Every worker must
        call with the same size, dtype and op, in the same order.

        ``out`` (same shape and kind as ``x``; ``out=x`` is allowed) receives the result and is
        returned, as torch.distributed's in-place all_reduce does; without it a new array is made.

        ``average=True`` returns the mean of a sum instead (float tensors only): the division by the
        world size is folded into dequantization (exact when the world size is a power of two, one
        rounding otherwise).
        """
        return self.allreduce_async(x, out, op=op, average=average).result()

    def allreduce_async(
        self, x: Any, out: Any = None, *, op: str = "sum", average: bool = False
    ) -> concurrent.futures.Future[Any]:
        """Start an allreduce; calls run one after another, in the order they were made."""
        reduce = _reduce_of(op)
        arr, restore = as_numpy(x)
        if average and (arr.dtype != np.float32 or reduce != ReduceOp.sum):
            raise ValueError(f"average=True needs a sum of floating-point tensors, not {op} of {arr.dtype}")
        target, finish = output_for(out, x, arr)
        if reduce == ReduceOp.sum:
            factor = 1.0 / self.world_size if average else 1.0
            return self._submit(lambda: finish(restore, self._run(arr, target, factor)))
        call = Collective(Coll.allreduce, reduce, self.rank)

        def run() -> Any:
            if arr.dtype == np.int32:
                return finish(restore, self._run(arr, target, 1.0, call))
            got = decode_ordered(self._run(encode_ordered(arr, reduce), None, 1.0, call))
            if target is not None:
                target[...] = got
                return finish(restore, target)
            return finish(restore, got)

        return self._submit(run)

    # -- reduce-scatter ----------------------------------------------------------------------------
    def reduce_scatter(self, x: Any, out: Any = None, *, op: str = "sum", average: bool = False) -> Any:
        """Rank r gets the reduction over every worker of elements ``[r*s, (r+1)*s)`` of ``x`` (W*s
        elements of any shape, in C order): ``out`` (s elements) or a new 1-D array or tensor. Types,
        ``op`` and ``average`` as for :meth:`allreduce`. Each rank receives only its shard's results
        from the switch."""
        return self.reduce_scatter_async(x, out, op=op, average=average).result()

    def reduce_scatter_async(
        self, x: Any, out: Any = None, *, op: str = "sum", average: bool = False
    ) -> concurrent.futures.Future[Any]:
        reduce = _reduce_of(op)
        arr, _ = as_numpy(x)
        w = self.world_size
        if arr.size % w:
            raise ValueError(
                f"reduce_scatter needs a multiple of the world size ({w}) elements, got {arr.size}"
            )
        if average and (arr.dtype != np.float32 or reduce != ReduceOp.sum):
            raise ValueError(f"average=True needs a sum of floating-point tensors, not {op} of {arr.dtype}")
        s = arr.size // w
        src = arr if reduce == ReduceOp.sum or arr.dtype == np.int32 else encode_ordered(arr, reduce)
        factor = 1.0 / w if average else 1.0
        schedule = Schedule.sharded(w, s, self.elements, self._slots, src.dtype == np.float32)
        call = Collective(Coll.reduce_scatter, reduce, self.rank, per_shard=schedule.per_shard)
        lo = self.rank * s

        def run() -> Any:
            scratch = np.empty_like(src)  # only this rank's shard is written
            got = self._run(src, scratch, factor, call, schedule)[lo : lo + s] if s else src[:0]
            if reduce != ReduceOp.sum and arr.dtype == np.float32:
                got = decode_ordered(got)
            return from_bytes(out, like(x, np.ascontiguousarray(got)))

        return self._submit(run)

    # -- all-gather and broadcast: bytes ------------------------------------------------------------
    def all_gather(self, x: Any, out: Any = None) -> Any:
        """Every rank's ``x`` (s elements of any dtype, carried bit for bit), rank r's at
        ``[r*s, (r+1)*s)``: ``out`` (W*s elements) or a new 1-D array or tensor."""
        return self.all_gather_async(x, out).result()

    def all_gather_async(self, x: Any, out: Any = None) -> concurrent.futures.Future[Any]:
        raw, back = as_bytes(x)
        w, b = self.world_size, raw.size
        nw = -(-b // 4)  # words per shard (a shard's last word padded with zeros)
        schedule = Schedule.sharded(w, nw, self.elements, self._slots, False)
        call = Collective(Coll.all_gather, ReduceOp.sum, self.rank, per_shard=schedule.per_shard)

        def run() -> Any:
            target = bytes_view(out) if out is not None and out.dtype == x.dtype else None
            direct = target is not None and target.size == w * b and b % 4 == 0
            # Whole words: the engine works in the caller's memory; else in scratch, copied out after.
            words = target.view(">i4") if direct and target is not None else self._scratch_words(w * nw)
            mine = words[self.rank * nw : (self.rank + 1) * nw].view(np.uint8)
            mine[:b] = raw
            mine[b:] = 0
            if b:
                self._run(words, words, 1.0, call, schedule)
            if direct:
                return out
            gathered = words.view(np.uint8).reshape(w, 4 * nw)[:, :b]
            if target is not None and target.size == w * b:
                target.reshape(w, b)[...] = gathered
                return out
            return from_bytes(out, back(np.ascontiguousarray(gathered).reshape(-1)))

        return self._submit(run)

    def broadcast(self, x: Any, root: int, out: Any = None) -> Any:
        """``root``'s ``x`` at every rank (any dtype, bit for bit): into ``out`` (``out=x``: in place)
        or a new array or tensor of x's shape."""
        return self.broadcast_async(x, root, out).result()

    def broadcast_async(self, x: Any, root: int, out: Any = None) -> concurrent.futures.Future[Any]:
        if not 0 <= root < self.world_size:
            raise ValueError(f"root must be a rank in [0, {self.world_size}), got {root}")
        raw, back = as_bytes(x)
        b = raw.size
        nwords = -(-b // 4)
        call = Collective(Coll.broadcast, ReduceOp.sum, self.rank, root=root)
        schedule = Schedule.of(nwords, self.elements, self._slots, False)
        shape = tuple(x.shape)

        def run() -> Any:
            words = self._scratch_words(nwords)
            if self.rank == root:
                words.view(np.uint8)[:b] = raw
                words.view(np.uint8)[b:] = 0
            if nwords:
                self._run(words, words, 1.0, call, schedule)
            target = bytes_view(out) if out is not None and out.dtype == x.dtype else None
            if target is not None and target.size == b:
                target[...] = words.view(np.uint8)[:b]
                return out
            got = back(words.view(np.uint8)[:b].copy()).reshape(shape)
            return got if out is None else from_bytes(out, got.reshape(-1))

        return self._submit(run)

    # -- barrier -----------------------------------------------------------------------------------
    def barrier(self) -> None:
        """Return once every worker of the job has called barrier (one use of count 0)."""
        self.barrier_async().result()

    def barrier_async(self) -> concurrent.futures.Future[None]:
        call = Collective(Coll.barrier, ReduceOp.sum, self.rank)
        schedule = Schedule(0, self.elements, 1, 1, 0, 0, 0)

        def run() -> None:
            self._run(np.zeros(0, dtype=np.int32), None, 1.0, call, schedule)

        return self._submit(run)

    @property
    def _slots(self) -> int:
        raise NotImplementedError

    def _scratch_words(self, n: int) -> np.ndarray:
        """``n`` words of the worker's scratch buffer for gathered data, as opaque big-endian words (the
        engine then copies them without a byte swap). Grown as needed and kept: used by one call at a
        time, on the I/O thread."""
        buf: np.ndarray | None = getattr(self, "_scratch", None)
        if buf is None or buf.size < n:
            buf = self._scratch = np.empty(max(n, 1), dtype=">i4")
        return buf[:n]
