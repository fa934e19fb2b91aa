"""The host agent: allreduce any array or tensor through a netagg switch, recovering from loss.

A :class:`Worker` joins its job at the switch, then each :meth:`Worker.allreduce` cuts the input into
chunks of ``elements`` values, keeps one chunk in flight per slot of the job's window, retransmits on
timeout, drops duplicate and stale results, and returns the elementwise sum over all workers. The rules it
follows are those of docs/protocol.md ("Worker rules").
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import os
import secrets
import select
import socket
import time
from typing import Any, Literal

import numpy as np

from host_agent.quantize import chunk_exponents, dequantize, quantize
from netagg import kernels
from netagg.protocol import (
    EXP_BIAS,
    EXP_NONE,
    EXP_NONFINITE,
    HEADER,
    HEADER_SIZE,
    PAYLOAD_DTYPE,
    SET_BIT,
    VERSION,
    Flag,
    MsgType,
    parse_address,
    record_dtype,
    scale_bits,
)
from netagg.udpbatch import BATCH_BELOW_ELEMENTS, enable_gro, recv_batch, send_segments
from switch.udp import set_socket_buffers

__all__ = ["NetAggError", "NetAggTimeout", "NonFiniteError", "Worker", "parse_address"]

log = logging.getLogger(__name__)

_OFF_FLAGS = 2
_ACK_WORDS = 7  # JOIN_ACK payload: slot_base, slots, elements, fan-in, total workers, group, group port


#: Send errors that lose one datagram, as a lossy link would, and that the retransmission timer repairs:
#: nobody listening at the switch address yet (ICMP), a full socket buffer, a local packet filter
#: dropping it (EPERM; e.g. an nftables rule emulating loss). A filter that drops everything ends in
#: the usual timeout error.
_LOST_ON_SEND = (ConnectionRefusedError, BlockingIOError, PermissionError)


class NetAggError(RuntimeError):
    """The allreduce could not be carried out (the worker is unusable afterwards)."""


class NetAggTimeout(NetAggError, TimeoutError):
    """No progress for ``timeout`` seconds: the switch or another worker is gone."""


class NonFiniteError(ValueError):
    """Some worker's input had inf or NaN; every worker raises it for the same blocks."""


class _Stats:
    __slots__ = ("bytes_received", "bytes_sent", "received", "retransmissions", "sent", "stale")

    def __init__(self) -> None:
        self.sent = self.received = self.retransmissions = self.stale = 0
        self.bytes_sent = self.bytes_received = 0

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__slots__}


class Worker:
    """One worker of a netagg job.

    Give either ``switch`` (a static job at a known switch) or ``controller`` (the job is created through
    the control plane; the controller says where its switch is and what the worker's id and slots are).

    Args:
        switch: the switch's ``HOST:PORT``.
        rank: this worker's rank, 0 <= rank < world_size.
        world_size: workers in the job; must match the switch's configuration.
        job: the job id at the switch (an int); with ``controller``, the controller's job id ("j-...").
        controller: the controller's ``HOST:PORT``; ``world_size`` then defaults to the job's workers.
        token: bearer token for the controller (default: $NETAGG_TOKEN).
        tls_ca: CA certificate (PEM file) to reach the controller over TLS.
        replace: take the rank over from a worker that joined before (a restarted worker).
        worker_id: the id the switch knows this worker by (default: rank).
        elements: elements per packet if you want to check it; the switch's job decides it.
        timeout: seconds without any progress before :class:`NetAggTimeout` is raised.
        join_timeout: seconds to wait for every worker to join.
        min_rto, max_rto: bounds of the retransmission timeout, which adapts to the measured
            round-trip time (smoothed RTT + 4 x its deviation, as TCP does). Lower ``min_rto``
            recovers loss faster; too low retransmits packets that were only slow. Default: 20 ms for
            large packets, 100 ms for small ones (a window of ~1,000 small packets spends tens of
            milliseconds in the switch's queue on a busy 2-core machine, and whole runs of them
            retransmitted at once made storms in the measurements).
        nonfinite: ``"raise"`` (default) raises :class:`NonFiniteError` at every worker when any
            worker's input had inf/NaN; ``"nan"`` returns NaN for the affected blocks instead.
        bind: local ``HOST:PORT`` to send from (default: any port on the route to the switch).
        batch: send and receive packets of fewer than 1,024 elements in runs (UDP GSO/GRO). Turn it
            off where a switch reads frames off a link with AF_PACKET/pcap (BMv2 on veth): such a tap
            can see a GSO run as one oversized frame.
        sched_batch: run the worker's I/O thread under Linux's ``SCHED_BATCH`` policy (no privilege
            needed): a result arriving then wakes the thread without preempting what runs on that CPU
            (the switch, another worker, training compute), and the thread handles every result that
            came in meanwhile at its next turn. On a machine with more processes than CPUs this cuts
            context switches several-fold (README, "Measured"). Ignored where the OS lacks it.
    """

    def __init__(
        self,
        switch: str | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        *,
        job: int | str = 1,
        controller: str | None = None,
        token: str | None = None,
        tls_ca: str | None = None,
        replace: bool = False,
        worker_id: int | None = None,
        elements: int | None = None,
        timeout: float = 10.0,
        join_timeout: float = 60.0,
        min_rto: float | None = None,
        max_rto: float = 0.5,
        nonfinite: Literal["raise", "nan"] = "raise",
        bind: str | None = None,
        rcvbuf: int = 32 << 20,
        batch: bool = True,
        sched_batch: bool = True,
    ) -> None:
        if (switch is None) == (controller is None):
            raise ValueError("give either switch='HOST:PORT' (a static job) or controller='HOST:PORT'")
        if rank is None:
            raise ValueError("rank is required")
        if controller is None and world_size is None:
            raise ValueError("world_size is required with switch=...")
        if controller is None and not isinstance(job, int):
            raise ValueError(f"job must be the switch's int job id with switch=..., got {job!r}")
        if controller is not None and not isinstance(job, str):
            raise ValueError(
                f"job must be the controller's job id ('j-...') with controller=..., got {job!r}"
            )
        if world_size is not None and not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if timeout <= 0 or join_timeout <= 0:
            raise ValueError("timeout and join_timeout must be positive")
        if min_rto is not None and not 0 < min_rto <= max_rto:
            raise ValueError(f"need 0 < min_rto <= max_rto, got {min_rto}, {max_rto}")
        if nonfinite not in ("raise", "nan"):
            raise ValueError(f"nonfinite must be 'raise' or 'nan', got {nonfinite!r}")
        self.controller_job: str | None = None
        if controller is not None:
            assert isinstance(job, str)
            self.controller_job = job
            sock, joined = _join_controller(controller, job, rank, token, tls_ca, replace, bind)
            if world_size is not None and world_size != joined.total_workers:
                sock.close()
                raise NetAggError(
                    f"job {job} has {joined.total_workers} workers, but world_size={world_size} was given"
                )
            world_size, switch = joined.total_workers, joined.switch_address
            job, worker_id = joined.wire_job_id, joined.worker_id
            if not 0 <= rank < world_size:
                sock.close()
                raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        assert switch is not None and world_size is not None and isinstance(job, int)
        self.switch = parse_address(switch)
        if self.switch[1] == 0:
            raise ValueError(f"switch address {switch!r} needs a port")
        self.rank, self.world_size, self.job = rank, world_size, job
        self.worker_id = rank if worker_id is None else worker_id
        self.timeout, self.join_timeout = timeout, join_timeout
        self._min_rto_asked = min_rto
        self.min_rto, self.max_rto = (min_rto or min(0.02, max_rto)), max_rto
        self.nonfinite = nonfinite
        self._batch = batch
        self.stats = _Stats()
        self._srtt: float | None = None
        self._rttvar = 0.0
        self._broken: str | None = None
        if controller is None:
            family = socket.AF_INET6 if ":" in self.switch[0] else socket.AF_INET
            self._sock = socket.socket(family, socket.SOCK_DGRAM)
            if bind:
                self._sock.bind(parse_address(bind))
        else:
            self._sock = sock
        set_socket_buffers(self._sock, rcvbuf, 4 << 20)
        self._sock.connect(self.switch)
        self._buf = bytearray(1 << 16)
        self._runbuf = bytearray(1 << 20)  # several GRO runs of small results, back to back
        self._poll = select.poll()
        self._poll.register(self._sock, select.POLLIN)
        self._mcast: socket.socket | None = None
        self._rcvbuf = rcvbuf
        self._executor = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix=f"netagg-w{rank}", initializer=_io_thread_policy if sched_batch else None
        )
        try:
            self._join(elements)
        except BaseException:
            self.close()
            raise

    # -- public API ----------------------------------------------------------------------------
    def allreduce(self, x: Any, out: Any = None, *, average: bool = False) -> Any:
        """Elementwise sum of ``x`` over every worker of the job; same type, dtype and shape as ``x``.

        ``x`` is a numpy array or torch tensor of float32 (quantized, error within the bound of
        docs/protocol.md), int32 (exact; wraps on overflow like any int32 sum), or float16, bfloat16
        or float64 (carried as float32). Every worker must call with the same size and dtype, in the
        same order.

        ``out`` (same shape and kind as ``x``; ``out=x`` is allowed) receives the result and is
        returned, as torch.distributed's in-place all_reduce does; without it a new array is made.

        ``average=True`` returns the mean instead (float tensors only): the division by the world size
        is folded into dequantization, no extra pass over the result (exact when the world size is a
        power of two, one rounding otherwise).
        """
        return self.allreduce_async(x, out, average=average).result()

    def allreduce_async(
        self, x: Any, out: Any = None, *, average: bool = False
    ) -> concurrent.futures.Future[Any]:
        """Start an allreduce; calls run one after another, in the order they were made."""
        if self._broken:
            raise NetAggError(self._broken)
        arr, restore = _as_numpy(x)
        if average and arr.dtype != np.float32:
            raise ValueError(f"average=True needs a floating-point tensor, not {arr.dtype}")
        target, finish = _output(out, x, arr)
        factor = 1.0 / self.world_size if average else 1.0
        return self._executor.submit(lambda: finish(restore, self._allreduce(arr, target, factor)))

    def close(self) -> None:
        """Finish queued allreduces and release the sockets."""
        self._executor.shutdown(wait=True)
        self._sock.close()
        if self._mcast is not None:
            self._mcast.close()

    def _join_group(self, group: str, port: int) -> socket.socket:
        """A second socket that receives the switch's results sent to the job's multicast group."""
        local = self._sock.getsockname()[0]
        m = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        m.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # every worker of the host binds it
        set_socket_buffers(m, self._rcvbuf, 1 << 16)
        m.bind((group, port))
        m.setsockopt(
            socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(group) + socket.inet_aton(local)
        )
        m.setblocking(False)
        if self.batched:
            enable_gro(m)
        self._poll.register(m, select.POLLIN)
        log.debug("worker %d receives results on group %s:%d via %s", self.rank, group, port, local)
        return m

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def rto(self) -> float:
        if self._srtt is None:  # no sample yet: start high, as TCP does, so a slow start is no storm
            return max(self.min_rto, min(self.max_rto, 0.2))
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
                elif mtype == MsgType.JOIN_ACK and count == _ACK_WORDS and n == HEADER_SIZE + 4 * _ACK_WORDS:
                    params = np.frombuffer(self._buf, ">u4", _ACK_WORDS, HEADER_SIZE).tolist()
                    self._configure(epoch, *params, expected_elements=elements)
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
        group: int,
        group_port: int,
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
        # Small packets go out and come in as runs (GSO/GRO), processed with numpy a run at a time.
        self.batched = self._batch and elements < BATCH_BELOW_ELEMENTS and enable_gro(self._sock)
        if self._min_rto_asked is None:
            self.min_rto = min(self.max_rto, 0.1 if self.batched else 0.02)
        self._seq = np.zeros(slots, dtype=np.int64)  # the next use number of each slot, this epoch
        self._payload = np.zeros((slots, elements), dtype=PAYLOAD_DTYPE)  # last payload sent per slot
        if group and self._mcast is None:
            self._mcast = self._join_group(socket.inet_ntoa(group.to_bytes(4, "big")), group_port)
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
    def _allreduce(self, flat: np.ndarray, out: np.ndarray | None = None, factor: float = 1.0) -> np.ndarray:
        target = np.empty_like(flat) if out is None else out
        try:
            if flat.size == 0:
                return target
            if self.batched:
                return self._run_batched(flat, target, factor)
            return self._run(flat, target, factor)
        except NetAggError as exc:
            self._broken = f"worker unusable after an earlier failure ({exc}); create a new Worker"
            raise

    def _run(self, flat: np.ndarray, out: np.ndarray, factor: float = 1.0) -> np.ndarray:
        """One allreduce: every slot of the window runs its uses; see docs/protocol.md.

        This is the hot loop: per-slot state lives in plain lists and each chunk costs a few
        :mod:`netagg.kernels` calls on one row, a sendmsg and a recv_into.
        """
        is_float = flat.dtype == np.float32
        total = flat.size
        self._sock.setblocking(False)
        n = self.elements
        nchunks = -(-total // n)
        nfull = total // n
        window = min(self.slots, nchunks)
        boot = 1 if is_float else 0  # a float allreduce starts each slot with an exponent-only use
        nuses = [(nchunks - j + window - 1) // window + boot for j in range(window)]
        # Each chunk's exponent is read just before it is proposed, one window ahead of quantizing it:
        # the chunk is then still in the CPU's cache when quantized (one pass over memory, not two).
        block_exponent, kquantize, kdequantize = kernels.block_exponent, kernels.quantize, kernels.dequantize
        agreed = [0] * (nchunks if is_float else 0)
        base_seq = [int(s) for s in self._seq[:window]]
        pos = [0] * window
        deadline = [math.inf] * window
        sent_at = [0.0] * window
        tries = [0] * window
        pending: dict[int, int] = {}  # slot -> contributor bitmap of its last PENDING
        headers: list[bytes] = [b""] * window
        payload = self._payload
        rows = list(payload[:window])  # each slot's packet payload, whole
        bits, epoch, job, wid, slot_base = self.bits, self.epoch, self.job, self.worker_id, self.slot_base
        buf = self._buf
        got_whole = np.frombuffer(buf, PAYLOAD_DTYPE, n, HEADER_SIZE)  # a received RESULT's payload
        stats = self.stats
        sock_sendmsg = self._sock.sendmsg
        recv_into = self._sock.recv_into
        mcast_recv_into = self._mcast.recv_into if self._mcast is not None else None
        unpack = HEADER.unpack_from
        pack = HEADER.pack
        contrib, result_type, pending_type = int(MsgType.CONTRIB), int(MsgType.RESULT), int(MsgType.PENDING)
        rto = self.rto
        ldexp = math.ldexp

        def send(j: int, k: int, now: float) -> None:
            """Use k of slot j: quantize its chunk (none for a bootstrap use) and send it."""
            c = -1 if k < boot else j + (k - boot) * window
            cnt = 0
            dst = rows[j]
            if c >= 0:
                lo = c * n
                if c < nfull:
                    cnt = n
                else:
                    cnt = total - lo
                    dst = dst[:cnt]
                if is_float:
                    e = agreed[c]
                    shift = bits + EXP_BIAS - e
                    if e in (EXP_NONE, EXP_NONFINITE) or shift > 127:  # zero, inf/NaN, tiny: rare
                        _quantize_row(flat[lo : lo + cnt], e, bits, dst)
                    else:
                        kquantize(flat[lo : lo + cnt], 2.0**shift, dst)
                else:
                    dst[...] = flat[lo : lo + cnt]
            else:
                dst = dst[:0]
            proposal = EXP_NONE
            if is_float and k + 1 < nuses[j]:
                lo = (j + (k + 1 - boot) * window) * n
                proposal = block_exponent(flat[lo : lo + n], EXP_BIAS, EXP_NONE, EXP_NONFINITE)
            seq = (base_seq[j] + k) & 0xFFFFFFFF
            hdr = pack(
                VERSION,
                contrib,
                0,
                epoch,
                job,
                wid,
                (slot_base + j) | ((seq & 1) << 15),
                cnt,
                seq,
                proposal,
                0,
                0,
            )
            headers[j] = hdr
            try:
                stats.bytes_sent += sock_sendmsg((hdr, dst))
                stats.sent += 1
            except _LOST_ON_SEND:
                pass  # the switch is not there, the buffer is full, a filter dropped it: the timer resends
            sent_at[j] = now
            tries[j] = 0
            deadline[j] = now + rto

        def retransmit(j: int, now: float) -> None:
            hdr = bytearray(headers[j])
            hdr[_OFF_FLAGS] = Flag.RETX
            cnt = int.from_bytes(hdr[10:12], "big")
            self._send(hdr, payload[j, :cnt])
            stats.retransmissions += 1
            tries[j] += 1
            deadline[j] = now + min(self.max_rto, rto * 2.0 ** tries[j])

        now = time.monotonic()
        for j in range(window):
            send(j, 0, now)
        remaining = window
        last_progress = now
        since_timer_check = 0
        while remaining:
            n_recv = -1
            if mcast_recv_into is not None:  # results arrive here; the rest (PENDING, resends) below
                try:  # noqa: SIM105 (contextlib.suppress costs more in this loop)
                    n_recv = mcast_recv_into(buf)
                except BlockingIOError:
                    pass
            if n_recv < 0:
                try:
                    n_recv = recv_into(buf)
                except BlockingIOError:
                    n_recv = -1
                except ConnectionRefusedError:
                    n_recv = -2
            since_timer_check += 1
            if n_recv < 0 or since_timer_check >= 32:  # idle, or busy for a while: look at the timers
                since_timer_check = 0
                now = time.monotonic()
                first = min(deadline)
                if now >= first:
                    for late in range(window):
                        if deadline[late] <= now:
                            retransmit(late, now)
                elif n_recv < 0:
                    limit = last_progress + self.timeout
                    if now >= limit:
                        raise self._stalled(pos, nuses, pending, window, boot, total, nchunks)
                    self._wait_readable(min(first, limit) - now)
                if n_recv < 0:
                    continue
            stats.received += 1
            stats.bytes_received += n_recv
            if n_recv < HEADER_SIZE:
                stats.stale += 1
                continue
            version, mtype, _, r_epoch, r_job, _, r_slot, r_count, r_seq, r_exp, _, r_bitmap = unpack(buf)
            j = (r_slot & (SET_BIT - 1)) - slot_base
            if (
                version != VERSION
                or r_job != job
                or r_epoch != epoch
                or not 0 <= j < window
                or pos[j] >= nuses[j]
                or r_seq != (base_seq[j] + pos[j]) & 0xFFFFFFFF
            ):
                stats.stale += 1
                continue
            if mtype == pending_type:
                pending[j] = r_bitmap
                continue
            k = pos[j]
            c = -1 if k < boot else j + (k - boot) * window
            cnt = 0 if c < 0 else (n if c < nfull else total - c * n)
            if mtype != result_type or r_count != cnt or n_recv != HEADER_SIZE + 4 * cnt:
                stats.stale += 1
                continue
            if cnt:
                got = got_whole if cnt == n else got_whole[:cnt]
                dst = out[c * n : c * n + cnt]
                if is_float:
                    e = agreed[c]
                    if e in (EXP_NONE, EXP_NONFINITE):
                        _dequantize_row(got, e, bits, dst, factor)
                    else:
                        scale = ldexp(factor, e - EXP_BIAS - bits)
                        if scale < 2.0**-126:  # tiny sums go through float64: rare
                            _dequantize_row(got, e, bits, dst, factor)
                        else:
                            kdequantize(got, scale, dst)
                else:
                    dst[...] = got
            if is_float and k + 1 < nuses[j]:
                agreed[j + (k + 1 - boot) * window] = r_exp
            now = time.monotonic()
            if tries[j] == 0:  # Karn: only unambiguous samples
                self._rtt_sample(now - sent_at[j])
            if pending:
                pending.pop(j, None)
            pos[j] = k + 1
            last_progress = now
            if k + 1 < nuses[j]:
                send(j, k + 1, now)
            else:
                deadline[j] = math.inf
                remaining -= 1
        for j in range(window):
            self._seq[j] += nuses[j]
        if is_float:
            self._check_nonfinite(np.array(agreed, dtype=np.uint16), n, total)
        return out

    def _run_batched(self, flat: np.ndarray, out: np.ndarray, factor: float = 1.0) -> np.ndarray:
        """The same allreduce as :meth:`_run`, for small packets: every step works on arrays of slots,
        packets go out as GSO runs and results come in as GRO runs (docs/protocol.md's worker rules,
        unchanged)."""
        self._sock.setblocking(False)
        is_float = flat.dtype == np.float32
        total = flat.size
        n = self.elements
        nchunks = -(-total // n)
        nfull = total // n
        tail = total - nfull * n
        window = min(self.slots, nchunks)
        boot = 1 if is_float else 0
        slots = np.arange(window, dtype=np.int64)
        nuses = (nchunks - slots + window - 1) // window + boot
        flat2d = flat[: nfull * n].reshape(nfull, n)
        out2d = out[: nfull * n].reshape(nfull, n)
        exps = chunk_exponents(flat, n) if is_float else np.zeros(nchunks, dtype=np.uint16)
        agreed = np.zeros(nchunks, dtype=np.uint16)
        base = self._seq[:window].copy()
        pos = np.zeros(window, dtype=np.int64)
        deadline = np.full(window, np.inf)
        sent_at = np.zeros(window)
        tries = np.zeros(window, dtype=np.int64)
        pending: dict[int, int] = {}
        bits, rto, sock, stats = self.bits, self.rto, self._sock, self.stats
        sendbuf = np.zeros(window, dtype=record_dtype(n))  # the packet each slot has in flight
        sh, sp = sendbuf["h"], sendbuf["p"]
        sh["version"], sh["type"], sh["epoch"] = VERSION, MsgType.CONTRIB, self.epoch
        sh["job"], sh["worker"] = self.job, self.worker_id
        seg = HEADER_SIZE + 4 * n
        buf = self._runbuf
        view = memoryview(buf)

        def chunk_of(js: np.ndarray, k: np.ndarray) -> np.ndarray:
            return np.where(k < boot, -1, js + (k - boot) * window)

        def count_of(c: np.ndarray) -> np.ndarray:
            return np.where(c < 0, 0, np.where(c < nfull, n, tail))

        def transmit(js: np.ndarray) -> None:
            c = chunk_of(js, pos[js])
            full = (c >= 0) & (c < nfull)
            runs = []
            if full.any():
                runs.append((sendbuf[js[full]].view(np.uint8), seg))
            if (c < 0).any():
                runs.append((sh[js[c < 0]].view(np.uint8), HEADER_SIZE))
            for j in js[c == nfull]:  # the short last chunk travels alone
                runs.append((np.concatenate([sh[j : j + 1].view(np.uint8), sp[j, :tail].view(np.uint8)]), 0))
            for data, size in runs:
                try:
                    stats.sent += (
                        send_segments(sock, data.data, size) if size else int(bool(sock.send(data.data)))
                    )
                    stats.bytes_sent += data.size
                except _LOST_ON_SEND:
                    pass  # the timer resends

        def prepare(js: np.ndarray, now: float) -> None:
            k = pos[js]
            c = chunk_of(js, k)
            full = (c >= 0) & (c < nfull)
            if full.any():
                jf, cf = js[full], c[full]
                sp[jf] = quantize(flat2d[cf], agreed[cf], bits) if is_float else flat2d[cf]
            for j in js[c == nfull]:
                last = flat[nfull * n :].reshape(1, -1)
                sp[j, :tail] = quantize(last, agreed[nfull:], bits)[0] if is_float else last[0]
            seq = (base[js] + k) & 0xFFFFFFFF
            has_next = k + 1 < nuses[js]
            if is_float:
                nxt = np.where(has_next, chunk_of(js, k + 1), 0)
                sh["exp"][js] = np.where(has_next, exps[nxt], EXP_NONE)
            sh["flags"][js] = 0
            sh["slot"][js] = (self.slot_base + js) | ((seq & 1) << 15)
            sh["count"][js] = count_of(c)
            sh["seq"][js] = seq
            transmit(js)
            sent_at[js] = now
            tries[js] = 0
            deadline[js] = now + rto

        def receive(size: int, count: int, offset: int, now: float) -> tuple[int, int]:
            """Take ``count`` datagrams of ``size`` bytes at ``offset`` of the buffer.

            Returns (results accepted, slots that finished their last use)."""
            if size < HEADER_SIZE or (size - HEADER_SIZE) % 4:
                stats.stale += count
                return 0, 0
            rec = np.frombuffer(buf, record_dtype((size - HEADER_SIZE) // 4), count, offset)
            h = rec["h"]
            j = (h["slot"] & (SET_BIT - 1)).astype(np.int64) - self.slot_base
            ok = (h["version"] == VERSION) & (h["job"] == self.job) & (h["epoch"] == self.epoch)
            ok &= (j >= 0) & (j < window)
            jj = np.where(ok, j, 0)
            ok &= (pos[jj] < nuses[jj]) & (h["seq"] == ((base[jj] + pos[jj]) & 0xFFFFFFFF))
            for i in np.flatnonzero(ok & (h["type"] == MsgType.PENDING)):
                pending[int(jj[i])] = int(h["bitmap"][i])
            c = chunk_of(jj, pos[jj])
            ok &= (
                (h["type"] == MsgType.RESULT)
                & (h["count"] == count_of(c))
                & (count_of(c) == (size - HEADER_SIZE) // 4)
            )
            sel = np.flatnonzero(ok)
            js, first = np.unique(jj[sel], return_index=True)  # a duplicate in the same run counts once
            sel = sel[first]
            stats.stale += count - int(sel.size)
            if not sel.size:
                return 0, 0
            c = c[sel]
            got = rec["p"][sel]
            full = (c >= 0) & (c < nfull)
            if full.any():
                cf = c[full]
                out2d[cf] = dequantize(got[full], agreed[cf], bits, factor=factor) if is_float else got[full]
            for i in np.flatnonzero(c == nfull):
                row = got[i : i + 1, :tail]
                out[nfull * n :] = (
                    dequantize(row, agreed[nfull:], bits, factor=factor)[0] if is_float else row[0]
                )
            k = pos[js]
            if is_float:
                has_next = k + 1 < nuses[js]
                agreed[chunk_of(js[has_next], k[has_next] + 1)] = h["exp"][sel][has_next]
            fresh = tries[js] == 0  # Karn: only unambiguous samples
            if fresh.any():
                self._rtt_sample(float(np.median(now - sent_at[js[fresh]])))
            for j in js:
                pending.pop(int(j), None)
            pos[js] = k + 1
            done = pos[js] >= nuses[js]
            deadline[js[done]] = np.inf
            if not done.all():
                prepare(js[~done], now)
            return int(sel.size), int(done.sum())

        socks = [s for s in (self._mcast, sock) if s is not None]
        now = time.monotonic()
        prepare(slots, now)
        remaining = window
        last_progress = now
        idle_checks = 0
        while remaining:
            # Read everything queued (up to the buffer): runs of full-size results are collected
            # back to back and handled with one set of numpy calls; other runs as they come.
            filled = accepted = finished = reads = 0
            now = time.monotonic()
            while filled + 65536 <= len(buf):
                nb = -1
                for s in socks:
                    try:
                        nb, gso, _ = recv_batch(s, view[filled:])
                        break
                    except (BlockingIOError, ConnectionRefusedError):
                        continue
                if nb < 0:
                    break
                reads += 1
                stats.received += 1
                stats.bytes_received += nb
                size = gso if 0 < gso < nb else nb
                if size == seg and nb % seg == 0:
                    filled += nb
                    continue
                whole = nb // size
                got = receive(size, whole, filled, now)
                if whole * size < nb:
                    more = receive(nb - whole * size, 1, filled + whole * size, now)
                    got = (got[0] + more[0], got[1] + more[1])
                accepted, finished = accepted + got[0], finished + got[1]
            if filled:
                got = receive(seg, filled // seg, 0, now)
                accepted, finished = accepted + got[0], finished + got[1]
            if accepted:
                last_progress = now
            remaining -= finished
            idle_checks += 1
            if reads == 0 or idle_checks >= 32:
                idle_checks = 0
                now = time.monotonic()
                late = np.flatnonzero(deadline <= now)
                if late.size:
                    sh["flags"][late] = Flag.RETX
                    transmit(late)
                    tries[late] += 1
                    deadline[late] = now + np.minimum(self.max_rto, rto * 2.0 ** tries[late])
                    stats.retransmissions += int(late.size)
                elif reads == 0 and remaining:
                    limit = last_progress + self.timeout
                    if now >= limit:
                        raise self._stalled(
                            pos.tolist(), nuses.tolist(), pending, window, boot, total, nchunks
                        )
                    self._wait_readable(min(float(deadline.min()), limit) - now)
        self._seq[:window] += nuses
        if is_float:
            self._check_nonfinite(agreed, n, total)
        return out

    def _check_nonfinite(self, agreed: np.ndarray, n: int, total: int) -> None:
        """Raise NonFiniteError (at every worker alike) if some block's agreed exponent says inf/NaN."""
        if self.nonfinite != "raise" or not (bad := np.flatnonzero(agreed == EXP_NONFINITE)).size:
            return
        spans = ", ".join(f"[{c * n}, {min(total, (c + 1) * n)})" for c in bad[:5])
        more = " ..." if bad.size > 5 else ""
        raise NonFiniteError(
            f"inf or NaN in the input of some worker: elements {spans}{more} have no finite sum"
        )

    def _wait_readable(self, seconds: float) -> None:
        self._poll.poll(max(0, math.ceil(seconds * 1000)))

    def _rtt_sample(self, rtt: float) -> None:
        if self._srtt is None:
            self._srtt, self._rttvar = rtt, rtt / 2
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - rtt)
            self._srtt = 0.875 * self._srtt + 0.125 * rtt

    def _stalled(
        self,
        pos: list[int],
        nuses: list[int],
        pending: dict[int, int],
        window: int,
        boot: int,
        total: int,
        nchunks: int,
    ) -> NetAggTimeout:
        waiting = [j for j in range(window) if pos[j] < nuses[j]]
        missing: set[int] = set()
        lines = []
        for j in waiting:
            what = "exponent exchange" if pos[j] < boot else f"chunk {j + (pos[j] - boot) * window}"
            if j in pending:
                gone = [w for w in range(self.fanin) if not pending[j] >> w & 1]
                missing.update(gone)
                lines.append(f"{what} (slot {self.slot_base + j}): waiting for workers {gone}")
            else:
                lines.append(f"{what} (slot {self.slot_base + j}): no answer from the switch")
        done = sum(pos)
        head = (
            f"worker {self.rank}: allreduce of {total} elements ({nchunks} chunks) made no progress "
            f"for {self.timeout:g}s; {len(waiting)} slots stuck after {done} completed uses. "
        )
        if missing:
            head += f"Workers {sorted(missing)} have not contributed (gone, or calling with another size). "
        elif not pending:
            head += f"The switch at {self.switch[0]}:{self.switch[1]} answered none of the retransmissions. "
            if self.batched:
                head += (
                    "(A switch that reads its links with pcap, such as BMv2 on veth, cannot take GSO runs: "
                )
                head += "try batch=False.) "
        more = f" (+{len(lines) - 6} more)" if len(lines) > 6 else ""
        return NetAggTimeout(head + "; ".join(lines[:6]) + more)

    # -- socket helpers ------------------------------------------------------------------------
    def _send(self, *parts: bytes | bytearray | memoryview | np.ndarray) -> None:
        try:
            n = self._sock.sendmsg(parts)  # type: ignore[arg-type]
        except _LOST_ON_SEND:
            return  # the switch is not there (yet), the buffer is full, a filter dropped it: resent later
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


def _join_controller(
    controller: str,
    job: str,
    rank: int,
    token: str | None,
    tls_ca: str | None,
    replace: bool,
    bind: str | None,
) -> tuple[socket.socket, Any]:
    """Bind the worker's socket and join ``job`` at the controller with its address; returns the socket
    and the JoinJobResponse. gRPC errors become NetAggError with the controller's message."""
    import grpc

    from netagg.rpc import channel, read_token
    from netagg.v1 import control_pb2 as pb
    from netagg.v1 import control_pb2_grpc as pb_grpc

    chost, cport = parse_address(controller)
    if cport == 0:
        raise ValueError(f"controller address {controller!r} needs a port")
    host, port = parse_address(bind) if bind else ("0.0.0.0", 0)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((host, port))
        port = sock.getsockname()[1]
        unbound = host in ("0.0.0.0", "::")
        if unbound:
            # The address others see: the one this host uses on its route to the controller.
            with socket.socket(sock.family, socket.SOCK_DGRAM) as probe:
                probe.connect((chost, cport))
                host = probe.getsockname()[0]
        with channel(controller, read_token(token), tls_ca=tls_ca) as ch:
            stub = pb_grpc.ControllerStub(ch)
            try:
                joined = stub.JoinJob(
                    pb.JoinJobRequest(job_id=job, rank=rank, address=_fmt(host, port), replace=replace),
                    timeout=30,
                )
                if unbound:
                    # The switch sees the address of this host's route to the switch: if that is not
                    # the one toward the controller, say so (the switch takes packets only from there).
                    shost, sport = parse_address(joined.switch_address)
                    with socket.socket(sock.family, socket.SOCK_DGRAM) as probe:
                        probe.connect((shost, sport))
                        if probe.getsockname()[0] != host:
                            host = probe.getsockname()[0]
                            request = pb.JoinJobRequest(
                                job_id=job, rank=rank, address=_fmt(host, port), replace=True
                            )
                            joined = stub.JoinJob(request, timeout=30)
            except grpc.RpcError as exc:
                raise NetAggError(f"controller {controller}: {exc.code().name}: {exc.details()}") from None
    except BaseException:
        sock.close()
        raise
    return sock, joined


def _fmt(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _io_thread_policy() -> None:
    """SCHED_BATCH for the calling thread (scheduling policies are per thread on Linux)."""
    policy = getattr(os, "SCHED_BATCH", None)
    if policy is None:
        return
    try:
        os.sched_setscheduler(0, policy, os.sched_param(0))
    except OSError as exc:  # e.g. a seccomp profile that forbids it: only slower
        log.debug("SCHED_BATCH refused: %s", exc)


def _quantize_row(row: np.ndarray, exp: int, bits: int, dst: np.ndarray) -> None:
    """quantize() for one block (the worker's loop calls netagg.kernels itself in the common case)."""
    quantize(row.reshape(1, -1), np.array([exp], np.uint16), bits, out=dst.reshape(1, -1))


def _dequantize_row(got: np.ndarray, exp: int, bits: int, dst: np.ndarray, factor: float = 1.0) -> None:
    """dequantize() for one block (the worker's loop calls netagg.kernels itself in the common case)."""
    dequantize(got.reshape(1, -1), np.array([exp], np.uint16), bits, out=dst.reshape(1, -1), factor=factor)


def _output(out: Any, x: Any, flat: np.ndarray) -> tuple[np.ndarray | None, Any]:
    """Where the engine writes (a flat view of ``out`` when possible) and how the caller gets it back."""
    if out is None:
        return None, lambda restore, result: restore(result)
    if tuple(out.shape) != tuple(x.shape):
        raise ValueError(f"out has shape {tuple(out.shape)}, the input {tuple(x.shape)}")
    if type(out).__module__.startswith("torch"):
        import torch

        if out.dtype != x.dtype:
            raise ValueError(f"out has dtype {out.dtype}, the input {x.dtype}")
        if out.device.type == "cpu" and out.is_contiguous() and out.dtype in (torch.float32, torch.int32):
            return out.view(-1).numpy(), lambda restore, result: out

        def copy_torch(restore: Any, result: np.ndarray) -> Any:
            out.copy_(restore(result))
            return out

        return None, copy_torch
    if not isinstance(out, np.ndarray) or out.dtype != np.asarray(x).dtype:
        raise ValueError("out must be an array of the input's dtype")
    if out.flags.c_contiguous and out.dtype == flat.dtype:
        return out.reshape(-1), lambda restore, result: out

    def copy_numpy(restore: Any, result: np.ndarray) -> np.ndarray:
        out[...] = restore(result)
        return out

    return None, copy_numpy


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
