"""The host agent: allreduce any array or tensor through a netagg switch, recovering from loss.

A :class:`Worker` joins its job at the switch, then each :meth:`Worker.allreduce` cuts the input into
chunks of ``elements`` values, keeps one chunk in flight per slot of the job's window, retransmits on
timeout, drops duplicate and stale results, and returns the elementwise sum over all workers. The rules it
follows are those of docs/protocol.md ("Worker rules").
"""

from __future__ import annotations

import concurrent.futures
import logging
import secrets
import socket
import time
from typing import Any, Literal

import numpy as np

from host_agent.quantize import block_exponents, dequantize, quantize
from netagg.protocol import (
    EXP_NONE,
    EXP_NONFINITE,
    HEADER,
    HEADER_SIZE,
    PAYLOAD_DTYPE,
    SET_BIT,
    VERSION,
    Flag,
    MsgType,
    scale_bits,
)
from switch.udp import set_socket_buffers

__all__ = ["NetAggError", "NetAggTimeout", "NonFiniteError", "Worker", "parse_address"]

log = logging.getLogger(__name__)

_OFF_FLAGS = 2
_BOOT = -1  # the chunk index of a slot's bootstrap use (no data; only an exponent proposal)


class NetAggError(RuntimeError):
    """The allreduce could not be carried out (the worker is unusable afterwards)."""


class NetAggTimeout(NetAggError, TimeoutError):
    """No progress for ``timeout`` seconds: the switch or another worker is gone."""


class NonFiniteError(ValueError):
    """Some worker's input had inf or NaN; every worker raises it for the same blocks."""


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port), with a clear error for anything else."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


class _Stats:
    __slots__ = ("bytes_received", "bytes_sent", "received", "retransmissions", "sent", "stale")

    def __init__(self) -> None:
        self.sent = self.received = self.retransmissions = self.stale = 0
        self.bytes_sent = self.bytes_received = 0

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__slots__}


class Worker:
    """One worker of a netagg job.

    Args:
        switch: the switch's ``HOST:PORT``.
        rank: this worker's rank, 0 <= rank < world_size.
        world_size: workers in the job; must match the switch's configuration.
        job: the job id at the switch.
        worker_id: the id the switch knows this worker by (default: rank).
        elements: elements per packet if you want to check it; the switch's job decides it.
        timeout: seconds without any progress before :class:`NetAggTimeout` is raised.
        join_timeout: seconds to wait for every worker to join.
        min_rto, max_rto: bounds of the retransmission timeout, which adapts to the measured
            round-trip time (2 x smoothed RTT + 4 x its deviation, as TCP does). Lower ``min_rto``
            recovers loss faster; too low retransmits packets that were only slow.
        nonfinite: ``"raise"`` (default) raises :class:`NonFiniteError` at every worker when any
            worker's input had inf/NaN; ``"nan"`` returns NaN for the affected blocks instead.
        bind: local ``HOST:PORT`` to send from (default: any port on the route to the switch).
    """

    def __init__(
        self,
        switch: str,
        rank: int,
        world_size: int,
        *,
        job: int = 1,
        worker_id: int | None = None,
        elements: int | None = None,
        timeout: float = 10.0,
        join_timeout: float = 60.0,
        min_rto: float = 0.005,
        max_rto: float = 0.5,
        nonfinite: Literal["raise", "nan"] = "raise",
        bind: str | None = None,
        rcvbuf: int = 32 << 20,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if timeout <= 0 or join_timeout <= 0:
            raise ValueError("timeout and join_timeout must be positive")
        if not 0 < min_rto <= max_rto:
            raise ValueError(f"need 0 < min_rto <= max_rto, got {min_rto}, {max_rto}")
        if nonfinite not in ("raise", "nan"):
            raise ValueError(f"nonfinite must be 'raise' or 'nan', got {nonfinite!r}")
        self.switch = parse_address(switch)
        if self.switch[1] == 0:
            raise ValueError(f"switch address {switch!r} needs a port")
        self.rank, self.world_size, self.job = rank, world_size, job
        self.worker_id = rank if worker_id is None else worker_id
        self.timeout, self.join_timeout = timeout, join_timeout
        self.min_rto, self.max_rto = min_rto, max_rto
        self.nonfinite = nonfinite
        self.stats = _Stats()
        self._srtt: float | None = None
        self._rttvar = 0.0
        self._broken: str | None = None
        family = socket.AF_INET6 if ":" in self.switch[0] else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        set_socket_buffers(self._sock, rcvbuf, 4 << 20)
        if bind:
            self._sock.bind(parse_address(bind))
        self._sock.connect(self.switch)
        self._buf = bytearray(1 << 16)
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"netagg-w{rank}")
        try:
            self._join(elements)
        except BaseException:
            self.close()
            raise

    # -- public API ----------------------------------------------------------------------------
    def allreduce(self, x: Any) -> Any:
        """Elementwise sum of ``x`` over every worker of the job; same type, dtype and shape as ``x``.

        ``x`` is a numpy array or torch tensor of float32 (quantized, error within the bound of
        docs/protocol.md), int32 (exact; wraps on overflow like any int32 sum), or float16, bfloat16
        or float64 (carried as float32). Every worker must call with the same size and dtype, in the
        same order.
        """
        return self.allreduce_async(x).result()

    def allreduce_async(self, x: Any) -> concurrent.futures.Future[Any]:
        """Start an allreduce; calls run one after another, in the order they were made."""
        if self._broken:
            raise NetAggError(self._broken)
        arr, restore = _as_numpy(x)
        return self._executor.submit(lambda: restore(self._allreduce(arr)))

    def close(self) -> None:
        """Finish queued allreduces and release the socket."""
        self._executor.shutdown(wait=True)
        self._sock.close()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def rto(self) -> float:
        if self._srtt is None:
            return max(self.min_rto, 0.05)
        return min(self.max_rto, max(self.min_rto, self._srtt + 4 * self._rttvar))

    # -- join ----------------------------------------------------------------------------------
    def _join(self, elements: int | None) -> None:
        incarnation = secrets.randbits(32) or 1
        pkt = HEADER.pack(VERSION, MsgType.JOIN, 0, 0, self.job, self.worker_id, 0, 0, incarnation, 0, 0, 0)
        deadline = time.monotonic() + self.join_timeout
        wait, joined_bitmap, heard = 0.02, None, False
        while True:
            self._send(pkt)
            end = min(deadline, time.monotonic() + wait)
            while (n := self._recv(end)) is not None:
                if n < HEADER_SIZE:
                    continue
                _, mtype, _, epoch, job, worker, _, count, seq, _, _, bitmap = HEADER.unpack_from(self._buf)
                if job != self.job or worker != self.worker_id or seq != incarnation:
                    self.stats.stale += 1
                    continue
                heard = True
                if mtype == MsgType.PENDING:
                    joined_bitmap = bitmap
                elif mtype == MsgType.JOIN_ACK and count == 5 and n == HEADER_SIZE + 20:
                    params = np.frombuffer(self._buf, PAYLOAD_DTYPE, 5, HEADER_SIZE).astype(int)
                    self._configure(epoch, *(int(p) for p in params), expected_elements=elements)
                    return
            if time.monotonic() >= deadline:
                if not heard:
                    raise NetAggTimeout(
                        f"switch {self.switch[0]}:{self.switch[1]} did not answer JOIN for job {self.job} "
                        f"within {self.join_timeout:g}s (is it running, and configured for job {self.job}?)"
                    )
                missing = [w for w in range(self.world_size) if not (joined_bitmap or 0) >> w & 1]
                raise NetAggTimeout(
                    f"job {self.job}: workers {missing} did not join within {self.join_timeout:g}s"
                )
            wait = min(wait * 2, 0.25)  # well inside the switch's join_refresh (2 s)

    def _configure(
        self,
        epoch: int,
        slot_base: int,
        slots: int,
        elements: int,
        fanin: int,
        total: int,
        *,
        expected_elements: int | None,
    ) -> None:
        if total != self.world_size:
            raise NetAggError(
                f"switch job {self.job} has {total} workers in all, but this worker was "
                f"started with world_size={self.world_size}"
            )
        if expected_elements is not None and expected_elements != elements:
            raise NetAggError(
                f"switch job {self.job} uses {elements} elements per packet, "
                f"not the {expected_elements} asked for"
            )
        self.epoch, self.slot_base, self.slots, self.elements = epoch, slot_base, slots, elements
        self.fanin = fanin
        self.bits = scale_bits(total)
        self._seq = np.zeros(slots, dtype=np.int64)  # the next use number of each slot, this epoch
        self._payload = np.zeros((slots, elements), dtype=PAYLOAD_DTYPE)  # last payload sent per slot
        log.debug(
            "worker %d joined job %d: epoch %d, slots [%d, %d), %d elements/packet",
            self.rank,
            self.job,
            epoch,
            slot_base,
            slot_base + slots,
            elements,
        )

    # -- the allreduce engine ------------------------------------------------------------------
    def _allreduce(self, flat: np.ndarray) -> np.ndarray:
        try:
            return self._run(flat)
        except NetAggError as exc:
            self._broken = f"worker unusable after an earlier failure ({exc}); create a new Worker"
            raise

    def _run(self, flat: np.ndarray) -> np.ndarray:
        """One allreduce: every slot of the window runs its uses; see docs/protocol.md."""
        is_float = flat.dtype == np.float32
        total = flat.size
        out = np.empty(total, dtype=flat.dtype)
        if total == 0:
            return out
        n = self.elements
        nchunks = -(-total // n)
        nfull = total // n
        window = min(self.slots, nchunks)
        boot = 1 if is_float else 0  # a float allreduce starts each slot with an exponent-only use
        nuses = (nchunks - np.arange(window) + window - 1) // window + boot
        if is_float:
            exps = np.empty(nchunks, dtype=np.uint16)
            if nfull:
                exps[:nfull] = block_exponents(flat[: nfull * n].reshape(nfull, n))
            if nfull < nchunks:
                exps[nfull] = block_exponents(flat[nfull * n :].reshape(1, -1))[0]
            agreed = np.zeros(nchunks, dtype=np.uint16)
        else:
            exps = agreed = np.zeros(0, dtype=np.uint16)
        base_seq = self._seq[:window].copy()
        pos = np.zeros(window, dtype=np.int64)
        deadline = np.full(window, np.inf)
        sent_at = np.zeros(window)
        tries = np.zeros(window, dtype=np.int64)
        pending: dict[int, int] = {}  # slot -> contributor bitmap of its last PENDING
        headers: list[bytearray] = [bytearray()] * window
        payload = self._payload
        bits, epoch, job, wid, slot_base = self.bits, self.epoch, self.job, self.worker_id, self.slot_base
        buf = self._buf
        stats = self.stats

        def chunk_of(j: int, k: int) -> int:
            return _BOOT if k < boot else j + (k - boot) * window

        def count_of(c: int) -> int:
            return 0 if c == _BOOT else min(n, total - c * n)

        def send(j: int, now: float) -> None:
            k = int(pos[j])
            c = chunk_of(j, k)
            cnt = count_of(c)
            if cnt:
                row = flat[c * n : c * n + cnt]
                if is_float:
                    quantize(row.reshape(1, -1), agreed[c : c + 1], bits, out=payload[j, :cnt].reshape(1, -1))
                else:
                    payload[j, :cnt] = row
            proposal = int(exps[chunk_of(j, k + 1)]) if is_float and k + 1 < nuses[j] else EXP_NONE
            seq = int(base_seq[j] + k) & 0xFFFFFFFF
            slot = (slot_base + j) | (SET_BIT if seq & 1 else 0)
            hdr = bytearray(
                HEADER.pack(VERSION, MsgType.CONTRIB, 0, epoch, job, wid, slot, cnt, seq, proposal, 0, 0)
            )
            headers[j] = hdr
            self._send(hdr, payload[j, :cnt])
            sent_at[j] = now
            tries[j] = 0
            deadline[j] = now + self.rto

        def retransmit(j: int, now: float) -> None:
            hdr = headers[j]
            hdr[_OFF_FLAGS] = Flag.RETX
            cnt = count_of(chunk_of(j, int(pos[j])))
            self._send(hdr, payload[j, :cnt])
            stats.retransmissions += 1
            tries[j] += 1
            deadline[j] = now + min(self.max_rto, self.rto * 2.0 ** int(tries[j]))

        now = time.monotonic()
        for j in range(window):
            send(j, now)
        remaining = window
        last_progress = now
        while remaining:
            n_recv = self._recv(min(float(deadline.min()), last_progress + self.timeout))
            now = time.monotonic()
            if n_recv is None:
                if now - last_progress >= self.timeout:
                    raise self._stalled(pos, nuses, base_seq, pending, chunk_of, total, nchunks)
                for late in np.flatnonzero(deadline <= now):
                    retransmit(int(late), now)
                continue
            if n_recv < HEADER_SIZE:
                stats.stale += 1
                continue
            version, mtype, _, r_epoch, r_job, _, r_slot, r_count, r_seq, r_exp, _, r_bitmap = (
                HEADER.unpack_from(buf)
            )
            j = (r_slot & (SET_BIT - 1)) - slot_base
            if (
                version != VERSION
                or r_job != job
                or r_epoch != epoch
                or not 0 <= j < window
                or pos[j] >= nuses[j]
                or r_seq != (int(base_seq[j] + pos[j]) & 0xFFFFFFFF)
            ):
                stats.stale += 1
                continue
            if mtype == MsgType.PENDING:
                pending[j] = r_bitmap
                continue
            c = chunk_of(j, int(pos[j]))
            cnt = count_of(c)
            if mtype != MsgType.RESULT or r_count != cnt or n_recv != HEADER_SIZE + 4 * cnt:
                stats.stale += 1
                continue
            if cnt:
                got = np.frombuffer(buf, PAYLOAD_DTYPE, cnt, HEADER_SIZE)
                dst = out[c * n : c * n + cnt]
                if is_float:
                    dequantize(got.reshape(1, -1), agreed[c : c + 1], bits, out=dst.reshape(1, -1))
                else:
                    dst[...] = got
            if is_float and pos[j] + 1 < nuses[j]:
                agreed[chunk_of(j, int(pos[j]) + 1)] = r_exp
            if tries[j] == 0:  # Karn: only unambiguous samples
                self._rtt_sample(now - sent_at[j])
            pending.pop(j, None)
            pos[j] += 1
            last_progress = now
            if pos[j] < nuses[j]:
                send(j, now)
            else:
                deadline[j] = np.inf
                remaining -= 1
        self._seq[:window] += nuses
        if is_float and self.nonfinite == "raise" and (bad := np.flatnonzero(agreed == EXP_NONFINITE)).size:
            spans = ", ".join(f"[{c * n}, {min(total, (c + 1) * n)})" for c in bad[:5])
            raise NonFiniteError(
                f"inf or NaN in the input of some worker: elements {spans}"
                f"{' ...' if bad.size > 5 else ''} have no finite sum"
            )
        return out

    def _rtt_sample(self, rtt: float) -> None:
        if self._srtt is None:
            self._srtt, self._rttvar = rtt, rtt / 2
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - rtt)
            self._srtt = 0.875 * self._srtt + 0.125 * rtt

    def _stalled(
        self,
        pos: np.ndarray,
        nuses: np.ndarray,
        base_seq: np.ndarray,
        pending: dict[int, int],
        chunk_of: Any,
        total: int,
        nchunks: int,
    ) -> NetAggTimeout:
        waiting = [int(j) for j in np.flatnonzero(pos < nuses)]
        missing: set[int] = set()
        lines = []
        for j in waiting:
            c = chunk_of(j, int(pos[j]))
            what = "exponent exchange" if c == _BOOT else f"chunk {c}"
            if j in pending:
                gone = [w for w in range(self.fanin) if not pending[j] >> w & 1]
                missing.update(gone)
                lines.append(f"{what} (slot {self.slot_base + j}): waiting for workers {gone}")
            else:
                lines.append(f"{what} (slot {self.slot_base + j}): no answer from the switch")
        done = int(sum(min(int(p), int(u)) for p, u in zip(pos, nuses, strict=True)))
        head = (
            f"worker {self.rank}: allreduce of {total} elements ({nchunks} chunks) made no progress "
            f"for {self.timeout:g}s; {len(waiting)} slots stuck after {done} completed uses. "
        )
        if missing:
            head += f"Workers {sorted(missing)} have not contributed (gone, or calling with another size). "
        elif not pending:
            head += f"The switch at {self.switch[0]}:{self.switch[1]} answered none of the retransmissions. "
        more = f" (+{len(lines) - 6} more)" if len(lines) > 6 else ""
        return NetAggTimeout(head + "; ".join(lines[:6]) + more)

    # -- socket helpers ------------------------------------------------------------------------
    def _send(self, *parts: bytes | bytearray | memoryview | np.ndarray) -> None:
        try:
            n = self._sock.sendmsg(parts)  # type: ignore[arg-type]
        except (ConnectionRefusedError, BlockingIOError):
            return  # the switch is not there (yet) or the buffer is full: the timer will resend
        self.stats.sent += 1
        self.stats.bytes_sent += n

    def _recv(self, deadline: float) -> int | None:
        """Receive one datagram into ``self._buf`` before ``deadline``; None on timeout.

        What is already queued is always read, even past the deadline, so that a result that has
        arrived is never retransmitted for.
        """
        while True:
            self._sock.settimeout(max(0.0, deadline - time.monotonic()))
            try:
                n = self._sock.recv_into(self._buf)
            except (TimeoutError, BlockingIOError):
                return None
            except ConnectionRefusedError:  # ICMP: nobody listens at the switch address right now
                if time.monotonic() >= deadline:
                    return None
                continue
            self.stats.received += 1
            self.stats.bytes_received += n
            return n


def _as_numpy(x: Any) -> tuple[np.ndarray, Any]:
    """A flat float32 or int32 array for ``x`` and a function that turns a result back into x's kind."""
    mod = type(x).__module__
    if mod.startswith("torch"):
        import torch

        t = x.detach()
        dtype, shape, device = t.dtype, t.shape, t.device
        if dtype in (torch.float16, torch.bfloat16, torch.float64):
            t = t.float()
        elif dtype not in (torch.float32, torch.int32):
            raise TypeError(
                f"netagg sums float32/int32 (and float16/bfloat16/float64 as float32), not {dtype}"
            )
        arr = t.cpu().contiguous().reshape(-1).numpy()

        def restore_torch(out: np.ndarray) -> Any:
            return torch.from_numpy(out).reshape(shape).to(device=device, dtype=dtype)

        return arr, restore_torch
    a = np.asarray(x)
    dtype, shape = a.dtype, a.shape
    if dtype in (np.float16, np.float64):
        a = a.astype(np.float32)
    elif dtype not in (np.float32, np.int32):
        raise TypeError(f"netagg sums float32/int32 (and float16/float64 as float32), not {dtype}")
    flat = np.ascontiguousarray(a).reshape(-1)

    def restore_numpy(out: np.ndarray) -> np.ndarray:
        return out.reshape(shape).astype(dtype, copy=False)

    return flat, restore_numpy
