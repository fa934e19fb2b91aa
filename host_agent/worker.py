"""The host agent: allreduce any array or tensor through a netagg switch, recovering from loss.

A :class:`Worker` joins its job at the switch, then each :meth:`Worker.allreduce` cuts the input into
chunks of ``elements`` values, keeps one chunk in flight per slot of the job's window, retransmits on
timeout, drops duplicate and stale results, and returns the elementwise sum over all workers. The rules it
follows are those of docs/protocol.md ("Worker rules").

The worker is a façade: the join (:mod:`host_agent.join`), the protocol of one call
(:mod:`host_agent.engine`, no sockets), the sockets (:mod:`host_agent.transport`) and the tensor
conversions (:mod:`host_agent.tensors`) each live in their own module; this one wires them and runs the
I/O loop around an engine on one thread per worker.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import socket
import time
from typing import Literal

import numpy as np

from host_agent.collectives import Collectives
from host_agent.engine import DatagramEngine, Engine, RunEngine, make_engine
from host_agent.errors import JobReformed, NetAggError, NetAggTimeout, NonFiniteError, RefusedError
from host_agent.join import JoinHandshake, format_address, join_controller, leave_controller
from host_agent.schedule import Collective, Schedule
from host_agent.session import JobParams, Rto, Session, Stats
from host_agent.transport import LOST_ON_SEND, Transport
from netagg.protocol import parse_address, parse_key
from netagg.udpbatch import BATCH_BELOW_ELEMENTS, recv_batch

__all__ = ["NetAggError", "NetAggTimeout", "NonFiniteError", "Worker", "parse_address"]

log = logging.getLogger(__name__)


class Worker(Collectives):
    """One worker of a netagg job: allreduce (sum, max, min), reduce-scatter, all-gather, broadcast and
    barrier through its switch (the collectives are in :mod:`host_agent.collectives`).

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
        key: the job's key (docs/protocol.md, "Job keys"): an int, or its text form (16 hex digits);
            default $NETAGG_KEY, else none. With ``controller`` the controller hands it out.
        bind: local ``HOST:PORT`` to send from (default: any port on the route to the switch).
        batch: send and receive packets of fewer than 1,024 elements in runs (UDP GSO/GRO). Turn it
            off where a switch reads frames off a link with AF_PACKET/pcap (BMv2 on veth): such a tap
            can see a GSO run as one oversized frame.
        sched_batch: run the worker's I/O thread under Linux's ``SCHED_BATCH`` policy (no privilege
            needed): a result arriving then wakes the thread without preempting what runs on that CPU
            (the switch, another worker, training compute), and the thread handles every result that
            came in meanwhile at its next turn. On a machine with more processes than CPUs this cuts
            context switches several-fold (docs/measurements.md). Ignored where the OS lacks it.
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
        key: int | str | None = None,
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
        self._leave: tuple[str, str, int, str, str | None, str | None] | None = None
        if key is None:
            key = os.environ.get("NETAGG_KEY") or 0
        self._key = parse_key(key) if isinstance(key, str) else key
        if not 0 <= self._key < 1 << 64:
            raise ValueError("a job key is 64 bits")
        sock: socket.socket | None = None
        if controller is not None:
            assert isinstance(job, str)
            self.controller_job = job
            sock, joined = join_controller(
                controller, job, rank, token, tls_ca, replace, bind, retry_for=join_timeout
            )
            self._leave = (controller, job, rank, joined.worker_address, token, tls_ca)
            if world_size is not None and world_size != joined.total_workers:
                sock.close()
                raise NetAggError(
                    f"job {job} has {joined.total_workers} workers, but world_size={world_size} was given"
                )
            world_size, switch = joined.total_workers, joined.switch_address
            job, worker_id = joined.wire_job_id, joined.worker_id
            self._key = getattr(joined, "key", 0) or self._key
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
        self.nonfinite = nonfinite
        self._batch = batch
        self.stats = Stats()
        self._rto = Rto(min_rto or min(0.02, max_rto), max_rto)
        self._broken: str | None = None
        self._session: Session | None = None
        self.batched = False
        self._transport = Transport(self.switch, self.stats, sock=sock, bind=bind, rcvbuf=rcvbuf)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix=f"netagg-w{rank}", initializer=_io_thread_policy if sched_batch else None
        )
        try:
            self._join(elements)
        except BaseException:
            self.close()
            raise

    # -- public API (the collectives: host_agent.collectives) ---------------------------------------
    def close(self) -> None:
        """Finish queued allreduces and release the sockets."""
        self._executor.shutdown(wait=True)
        self._transport.close()
        if self._leave is not None:  # tell the controller this rank is gone (best effort)
            leave, self._leave = self._leave, None
            leave_controller(*leave)

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what the switch said at the join --------------------------------------------------------
    @property
    def params(self) -> JobParams:
        """The job at the switch, as its JOIN_ACK gave it."""
        assert self._session is not None
        return self._session.params

    @property
    def slot_base(self) -> int:
        """The job's first slot at the switch."""
        return self.params.slot_base

    @property
    def elements(self) -> int:
        """int32 elements per packet (the switch's job decides it)."""
        return self.params.elements

    @property
    def _slots(self) -> int:
        return self.params.slots

    @property
    def rto(self) -> float:
        """The retransmission timeout now (it adapts to the measured round-trip time)."""
        return self._rto.value

    # -- join ----------------------------------------------------------------------------------
    def _join(self, elements: int | None) -> None:
        switch = format_address(*self.switch)
        handshake = JoinHandshake(self.job, self.worker_id, key=self._key, switch=switch)
        transport = self._transport
        start = time.monotonic()
        deadline, report = start + self.join_timeout, start + 5.0
        try:
            while True:
                transport.send_one(handshake.packet)
                end = min(deadline, time.monotonic() + handshake.next_wait())
                while (n := transport.recv_until(end)) is not None:
                    params = handshake.on_datagram(transport.buf, n)
                    if params is not None:
                        self._configure(params, expected_elements=elements)
                        return
                now = time.monotonic()
                if now >= deadline:
                    raise handshake.timeout_error(switch, self.world_size, self.join_timeout)
                if now >= report:  # a join that waits says for whom
                    report = now + 5.0
                    heard = handshake.heard
                    who = str(handshake.missing(self.world_size)) if heard else "the switch's answer"
                    log.warning(
                        "worker %d: waiting for workers %s to join job %d, %.0f s",
                        self.rank,
                        who,
                        self.job,
                        now - start,
                    )
        finally:
            self.stats.stale += handshake.stale

    def _configure(self, params: JobParams, *, expected_elements: int | None) -> None:
        if params.total_workers != self.world_size:
            raise NetAggError(
                f"switch job {self.job} has {params.total_workers} workers in all, but this worker was "
                f"started with world_size={self.world_size}"
            )
        if expected_elements is not None and expected_elements != params.elements:
            raise NetAggError(
                f"switch job {self.job} uses {params.elements} elements per packet, "
                f"not the {expected_elements} asked for"
            )
        # Small packets go out and come in as runs (GSO/GRO), processed with numpy a run at a time.
        self.batched = self._batch and params.elements < BATCH_BELOW_ELEMENTS and self._transport.enable_gro()
        if self._min_rto_asked is None:
            self._rto.min_rto = min(self._rto.max_rto, 0.1 if self.batched else 0.02)
        self._session = Session(
            params, self._rto, self.stats, key=self._key, switch=format_address(*self.switch)
        )
        if params.group:
            self._transport.join_group(socket.inet_ntoa(params.group.to_bytes(4, "big")), params.group_port)
        log.debug(
            "worker %d joined job %d: epoch %d, slots [%d, %d), %d elements/packet",
            self.rank,
            self.job,
            params.epoch,
            params.slot_base,
            params.slot_base + params.slots,
            params.elements,
        )

    # -- one call: an engine, driven by the sockets ---------------------------------------------
    def _run(
        self,
        flat: np.ndarray,
        out: np.ndarray | None = None,
        factor: float = 1.0,
        call: Collective | None = None,
        schedule: Schedule | None = None,
    ) -> np.ndarray:
        target = np.empty_like(flat) if out is None else out
        try:
            if flat.size == 0 and schedule is None:
                return target
            assert self._session is not None
            self._transport.sock.setblocking(False)
            now = time.monotonic()
            kw = {} if call is None else {"call": call}
            engine = make_engine(
                self._session, flat, target, factor, now, batched=self.batched, schedule=schedule, **kw
            )
            if isinstance(engine, RunEngine):
                self._drive_runs(engine)
            elif self.batched:  # a collective of a batched worker: one datagram at a time, no GRO
                self._transport.set_gro(False)
                try:
                    self._drive(engine)  # type: ignore[arg-type]
                finally:
                    self._transport.set_gro(True)
            else:
                assert isinstance(engine, DatagramEngine)
                self._drive(engine)
            return engine.finish(self.nonfinite)
        except JobReformed:
            raise  # the job started over without this call; the next call can go ahead
        except RefusedError as exc:
            if exc.reason == "unknown_job" and self.controller_job is not None:
                exc = RefusedError(
                    exc.reason,
                    f"job {self.controller_job} is not on its switch {format_address(*self.switch)} any "
                    f"more (wire job {self.job}): it was deleted",
                )
            self._broken = f"worker unusable after an earlier failure ({exc}); create a new Worker"
            raise exc from None
        except NetAggError as exc:
            self._broken = f"worker unusable after an earlier failure ({exc}); create a new Worker"
            raise

    def _stalled(self, engine: Engine) -> NetAggTimeout:
        return engine.stalled(f"worker {self.rank}", self.timeout, format_address(*self.switch))

    def _drive(self, engine: DatagramEngine) -> None:
        """One datagram at a time. This is the hot loop: results are read off the group's socket
        first, then the switch's (PENDING, resends); the timers are looked at when idle or every 32
        datagrams."""
        transport = self._transport
        buf, send, stats, timeout = transport.buf, transport.send, self.stats, self.timeout
        recv_into = transport.sock.recv_into
        mcast_recv_into = transport.mcast.recv_into if transport.mcast is not None else None
        sendmsg = transport.sock.sendmsg
        on_datagram, monotonic = engine.on_datagram, time.monotonic
        send(engine.start(monotonic()))
        since_timer_check = 0
        while engine.remaining:
            n_recv = -1
            if mcast_recv_into is not None:
                try:  # noqa: SIM105 (contextlib.suppress costs more in this loop)
                    n_recv = mcast_recv_into(buf)
                except BlockingIOError:
                    pass
            if n_recv < 0:
                try:
                    n_recv = recv_into(buf)
                except (BlockingIOError, ConnectionRefusedError):
                    n_recv = -1
            since_timer_check += 1
            if n_recv < 0 or since_timer_check >= 32:  # idle, or busy for a while: look at the timers
                since_timer_check = 0
                now = monotonic()
                first = engine.next_deadline()
                if now >= first:
                    send(engine.on_timer(now))
                elif n_recv < 0:
                    limit = engine.last_progress + timeout
                    if now >= limit:
                        raise self._stalled(engine)
                    transport.wait_readable(min(first, limit) - now)
                if n_recv < 0:
                    continue
            stats.received += 1
            stats.bytes_received += n_recv
            nxt = on_datagram(buf, n_recv, monotonic())
            if nxt is not None:  # the slot's next use: one datagram, sent here without a list
                try:
                    stats.bytes_sent += sendmsg(nxt[0])
                    stats.sent += 1
                except LOST_ON_SEND:
                    pass  # the timer resends
            if engine.outbox:  # fast retransmissions; the recovery's JOIN, offers and resends
                send(engine.take_outbox())

    def _drive_runs(self, engine: RunEngine) -> None:
        """Runs of small packets: everything queued is read (up to the buffer); runs of full-size
        results are collected back to back and handed to the engine at once, other runs as they come."""
        transport, stats = self._transport, self.stats
        buf = transport.runbuf
        view = memoryview(buf)
        socks = transport.sockets()
        seg = engine.seg
        transport.send(engine.start(time.monotonic()))
        idle_checks = 0
        while engine.remaining:
            filled = reads = 0
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
                transport.send(engine.on_run(buf, size, whole, filled, now))
                if whole * size < nb:
                    transport.send(engine.on_run(buf, nb - whole * size, 1, filled + whole * size, now))
            if filled:
                transport.send(engine.on_run(buf, seg, filled // seg, 0, now))
            if engine.outbox:  # the recovery's JOIN, offers and resends
                transport.send(engine.take_outbox())
            idle_checks += 1
            if reads == 0 or idle_checks >= 32:
                idle_checks = 0
                now = time.monotonic()
                late = engine.on_timer(now)
                if late:
                    transport.send(late)
                elif reads == 0 and engine.remaining:
                    limit = engine.last_progress + self.timeout
                    if now >= limit:
                        raise self._stalled(engine)
                    transport.wait_readable(min(engine.next_deadline(), limit) - now)


def _io_thread_policy() -> None:
    """SCHED_BATCH for the calling thread (scheduling policies are per thread on Linux)."""
    policy = getattr(os, "SCHED_BATCH", None)
    if policy is None:
        return
    try:
        os.sched_setscheduler(0, policy, os.sched_param(0))
    except OSError as exc:  # e.g. a seccomp profile that forbids it: only slower
        log.debug("SCHED_BATCH refused: %s", exc)
