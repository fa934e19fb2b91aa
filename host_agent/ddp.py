"""A PyTorch DDP communication hook that allreduces gradient buckets through a netagg switch.

    import torch.distributed as dist
    from host_agent.ddp import NetAggState, netagg_hook

    dist.init_process_group("gloo", ...)            # still needed: DDP's set-up and the fallback use it
    model = torch.nn.parallel.DistributedDataParallel(model)
    state = NetAggState(switch="127.0.0.1:47000")
    model.register_comm_hook(state, netagg_hook)
    # or, with a job created through the control plane (`netagg ctl create ...`):
    #   NetAggState(controller="127.0.0.1:47100", job="j-...", replace=True)
    ...
    state.close()                                   # on every rank: logs state.summary()

The hook hands each bucket's flat gradient buffer to the state's thread, which sends it through the
switch into an output buffer of its own (the bucket is left as it was), divides by the world size, and
completes the returned future from there, so the communication of one bucket overlaps the backward pass
of the next.

**Fallback, per bucket.** A bucket whose call through the switch fails (unreachable, timeout, refused,
no slots) goes through the process group (gloo) instead, and so do the following ones until the switch
is tried again: ``retry_after`` seconds after the failure (1 s by default), then after twice as long for
each failed try, up to ``retry_max`` (30 s). A try makes a new :class:`host_agent.Worker` (a worker
whose call failed is unusable) and sends that bucket through the switch; from the first bucket that gets
through, buckets go through the switch again. ``fallback="error"`` raises instead of falling back.

Ranks must choose the same way for every bucket, or their collectives would not line up. A rank that
falls back therefore first agrees with the others (one small all_gather on a gloo group of the hook's
own) on the bucket each is at and whether every rank's back-off has passed. A rank whose call failed
while others got the bucket's result from the switch (the switch died between sending it to one worker
and to another) gets that result from one of them, through the process group's store or, failing that,
a broadcast (host_agent/ddp_peers.py): every rank holds the same gradients, bit for bit. While calls
succeed none of this costs anything. :meth:`NetAggState.summary` says what went where.
"""

# No ``from __future__ import annotations`` here: DDP checks the hook's annotations as objects.
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.distributed as dist

from host_agent.ddp_peers import READY, SEQ, SIZE, PeerResults, agree, pass_on
from host_agent.ddp_stats import NetAggStats
from host_agent.errors import ControllerError, RefusedError
from host_agent.worker import NetAggError, Worker, parse_address
from netagg.protocol import parse_key

__all__ = ["NetAggState", "NetAggStats", "netagg_hook"]  # NetAggStats: host_agent.ddp_stats

log = logging.getLogger(__name__)

RETRY_JOIN_TIMEOUT = 5.0
"""Seconds a try to go back to the switch waits for every rank to join (at most ``join_timeout``): the
ranks start it together, right after agreeing to, so a switch that serves answers within milliseconds."""

CONFIG_ERRORS = frozenset(
    {"ALREADY_EXISTS", "NOT_FOUND", "PERMISSION_DENIED", "UNAUTHENTICATED", "INVALID_ARGUMENT"}
)
"""The controller's answers to the first join that the user has to fix (a rank still joined from an
earlier run, a wrong job id or token), and the switch's refusal of a wrong key (``bad_key``): raised
from the hook, never fallen back from, so that a run cannot train on gloo while its user believes it
uses the switch. Later joins (tries to go back to the switch) fall back on any error: the run was
configured right and the job may come back."""

MAX_CAUSES = 16  # distinct causes kept in the summary; further ones are counted under "other"


@dataclass
class NetAggState:
    """The hook's state: one per DDP model and rank. Every knob, and how to tune it:

    Args:
        switch: the switch's ``HOST:PORT`` (a static job).
        controller: instead of ``switch``, the controller's ``HOST:PORT``; ``job`` is then the
            controller's job id ("j-..."), whose switch, worker id and slots the controller hands out.
        token: bearer token for the controller (default: $NETAGG_TOKEN).
        tls_ca: CA certificate (PEM file) to reach the controller over TLS.
        replace: take the rank over at the controller from a worker that joined before, as a script
            re-run on the same job needs. Without it such a join is refused (``ALREADY_EXISTS``) and the
            hook raises :class:`host_agent.errors.ControllerError` at the first bucket rather than
            train on gloo. The state's own later joins always replace its earlier worker.
        key: the job's key (int, or 16 hex digits), for a static job whose switch has one (default:
            $NETAGG_KEY, as :class:`host_agent.Worker` reads it). A controller's job gets its key from
            the controller, which wins over this one (as in Worker).
        rank, world_size: default to torch.distributed's (of ``process_group``).
        job: the job id configured at the switch (int), or the controller's job id (str).
        process_group: the group DDP uses. Without it the fallback runs on a gloo group of the hook's
            own over the world (made at the first bucket); with it, on that group, which then must not
            be used by anything else while buckets may fall back.
        fallback: ``"gloo"`` sends a bucket the switch could not serve through the process group
            instead (an ERROR log line the first time, naming the cause; ``summary()`` counts every
            time); ``"error"`` raises :class:`host_agent.NetAggError` from the hook.
        timeout: seconds without progress before a bucket is given up on the switch. Lower detects a
            dead switch sooner; it must stay well above one step's compute so that slow ranks are
            not mistaken for a dead switch.
        join_timeout: seconds for every rank to join the switch's job at the first bucket; also how
            long the first bucket waits before falling back when the switch is not there at all.
        retry_after: seconds after a failure before the switch is tried again (at the next bucket after
            that at every rank); doubles after each failed try up to ``retry_max``. None: never again.
        retry_max: the longest back-off. A failed try costs up to ``RETRY_JOIN_TIMEOUT`` (5 s) of waiting
            for a switch that is not there; the back-off bounds that to a fraction of the run.
        worker_options: anything else :class:`host_agent.Worker` takes (``min_rto``, ``max_rto``,
            ``nonfinite``, ``bind``, ``worker_id``).
    """

    switch: str | None = None
    rank: int | None = None
    world_size: int | None = None
    job: int | str = 1
    controller: str | None = None
    token: str | None = None
    tls_ca: str | None = None
    replace: bool = False
    key: int | str | None = None
    process_group: Any = None
    fallback: Literal["gloo", "error"] = "gloo"
    timeout: float = 10.0
    join_timeout: float = 30.0
    retry_after: float | None = 1.0
    retry_max: float = 30.0
    worker_options: dict[str, Any] = field(default_factory=dict)
    stats: NetAggStats = field(default_factory=NetAggStats, init=False)
    _instances: ClassVar[int] = 0  # states made in this process: each has its own keys in the store

    def __post_init__(self) -> None:
        if (self.switch is None) == (self.controller is None):
            raise ValueError("give either switch='HOST:PORT' (a static job) or controller='HOST:PORT'")
        parse_address(self.switch or self.controller or "")  # ValueError with the reason for a bad address
        if self.controller is None and not isinstance(self.job, int):
            raise ValueError(f"with switch=..., job is the switch's int job id, got {self.job!r}")
        if self.controller is not None and not isinstance(self.job, str):
            raise ValueError(
                f"with controller=..., job is the controller's job id ('j-...'), got {self.job!r}"
            )
        if self.key is not None:  # checked as Worker checks it, before the first bucket
            if isinstance(self.key, str):
                self.key = parse_key(self.key)
            if not 0 <= self.key < 1 << 64:
                raise ValueError(f"a job key is 64 bits, got {self.key}")
        if self.fallback not in ("gloo", "error"):
            raise ValueError(f"fallback must be 'gloo' or 'error', got {self.fallback!r}")
        if self.timeout <= 0 or self.join_timeout <= 0:
            raise ValueError("timeout and join_timeout must be positive")
        if self.retry_after is not None and not 0 < self.retry_after <= self.retry_max:
            raise ValueError(f"need 0 < retry_after <= retry_max, got {self.retry_after}, {self.retry_max}")
        clash = {"switch", "controller", "rank", "world_size", "job", "token", "tls_ca", "replace", "key"}
        clash |= {"timeout", "join_timeout"}
        if clash & self.worker_options.keys():
            names = sorted(clash & self.worker_options.keys())
            raise ValueError(f"give {names} as NetAggState's own arguments, not in worker_options")
        if self.rank is None or self.world_size is None:
            if not dist.is_available() or not dist.is_initialized():
                raise ValueError("rank and world_size are needed when torch.distributed is not initialized")
            self.rank = dist.get_rank(self.process_group) if self.rank is None else self.rank
            if self.world_size is None:
                self.world_size = dist.get_world_size(self.process_group)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, {self.world_size}), got {self.rank}")
        self._make_worker: Callable[..., Any] = Worker  # what makes the state's workers
        self._clock: Callable[[], float] = time.monotonic
        self._worker: Any = None
        self._joined_before = False  # a join was tried: later ones replace this rank's earlier worker
        self._last_traffic: dict[str, int] = {}
        self._group: Any = None  # the group the fallback's collectives run on
        self._switch_seen = ""  # the switch's address, as the last worker knew it
        self._peers: PeerResults | None = None  # asks the other ranks for a result this one lost
        self._seq = 0  # the number of the next bucket (the same at every rank: DDP's order)
        self._outs: dict[int, torch.Tensor] = {}  # the switch's result for each bucket index
        self._held: tuple[int, torch.Tensor] | None = None  # the last bucket whose switch result we have
        self._falling_back_since: int | None = None  # the bucket whose call failed; None: switch mode
        self._gloo_at_failure = 0
        self._retry_at = 0.0
        self._backoff = self.retry_after or 0.0
        self._errors_logged = 0
        self._lock = threading.Lock()
        # Every collective the hook issues (through the switch or the fallback) runs on this one
        # thread, in bucket order, so all ranks issue them in the same order.
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="netagg-ddp")

    def __getstate__(self) -> dict[str, Any]:
        """Pickle the configuration only: sockets and threads stay with the process that made them."""
        state = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        state.pop("stats", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            object.__setattr__(self, k, v)
        self.stats = NetAggStats()
        self.__post_init__()

    # -- what the hook runs on the state's thread -------------------------------------------------
    def _allreduce_bucket(self, tensor: torch.Tensor, index: int) -> torch.Tensor:
        seq, self._seq = self._seq, self._seq + 1
        self.stats.buckets += 1
        out = self._outs.get(index)
        if out is None or out.shape != tensor.shape or out.dtype != tensor.dtype:
            out = self._outs[index] = torch.empty_like(tensor)
        if self._falling_back_since is None and self._through_switch(seq, tensor, out):
            return out
        while True:
            rows = self._agree(seq, tensor.numel())
            seqs = [row[SEQ] for row in rows]
            if min(seqs) != max(seqs):
                if self._pass_on(rows, seq, out):
                    return out
                continue  # this rank is ahead: it gave the result; now agree on its own bucket
            sizes = {row[SIZE] for row in rows}
            if len(sizes) > 1:
                raise NetAggError(f"bucket {seq} has different sizes at the ranks: {sorted(sizes)}")
            if not all(row[READY] for row in rows):
                return self._through_gloo(tensor)
            self.stats.retries += 1
            if self._through_switch(seq, tensor, out):
                return out

    def _through_switch(self, seq: int, tensor: torch.Tensor, out: torch.Tensor) -> bool:
        """The bucket's mean into ``out`` through the switch (or, when this rank's call failed after
        others got the result, from one of them); False if nobody got it."""
        joined = False
        try:
            if self._worker is None:
                self._worker = self._connect()
                host, port = self._worker.switch
                self._switch_seen = f"{host}:{port}"
            joined = True
            # the mean, with the division folded into dequantization (no pass of its own); gradient
            # buckets are floating point. Into ``out``: a call that fails leaves the bucket intact.
            self._worker.allreduce(tensor, out=out, average=True)
        except _ConfigError as exc:
            raise exc.error from None  # not the switch's failure: the user's to fix
        except (NetAggError, OSError) as exc:
            self._failed(seq, exc)
            # Others may have got the result this rank lost (a join that failed: nobody has it).
            if joined and self._peers is not None and self._peers.ask(seq, out, self.timeout):
                self._from_peer(seq, out)
                return True
            return False
        self.stats.switch_buckets += 1
        self.stats.switch_bytes += tensor.numel() * tensor.element_size()
        self._held = (seq, out)
        if self._falling_back_since is not None:
            self.stats.returns += 1
            log.info(
                "netagg: the switch at %s serves rank %d again from bucket %d (%d buckets through %s before)",
                self._where(),
                self.rank,
                seq,
                self.stats.gloo_buckets - self._gloo_at_failure,
                self._backend(),
            )
            self._falling_back_since = None
            self._backoff = self.retry_after or 0.0
        return True

    def _connect(self) -> Any:
        """A new worker: joins the job (the first time as the user said; later ones take the rank over
        from this state's earlier worker, and wait less for the others to join)."""
        first = not self._joined_before
        self._joined_before = True
        options = dict(self.worker_options)
        if self.key is not None:
            options["key"] = self.key
        try:
            return self._make_worker(
                self.switch,
                self.rank,
                self.world_size,
                job=self.job,
                controller=self.controller,
                token=self.token,
                tls_ca=self.tls_ca,
                replace=self.replace or not first,
                timeout=self.timeout,
                join_timeout=self.join_timeout if first else min(self.join_timeout, RETRY_JOIN_TIMEOUT),
                **options,
            )
        except (ControllerError, RefusedError) as exc:
            config = (
                exc.code in CONFIG_ERRORS if isinstance(exc, ControllerError) else exc.reason == "bad_key"
            )
            if first and config:
                log.error("netagg: rank %d cannot join job %s: %s", self.rank, self.job, exc)
                raise _ConfigError(exc) from exc
            raise

    def _failed(self, seq: int, exc: BaseException) -> None:
        """Book a failed call; raise it if the user asked for errors."""
        if getattr(self._worker, "_broken", True):  # unusable after its failure (JobReformed is not)
            self._close_worker()
        if self.fallback == "error":
            raise exc
        cause = f"{type(exc).__name__}: {exc}"
        causes = self.stats.causes
        key = cause if cause in causes or len(causes) < MAX_CAUSES else "other"
        causes[key] = causes.get(key, 0) + 1
        self.stats.fallbacks += 1
        now = self._clock()
        if self._falling_back_since is None:
            self._falling_back_since = seq
            self._gloo_at_failure = self.stats.gloo_buckets
            self._backoff = self.retry_after or 0.0
            # The first fallback of the run is an error; a new outage after the switch served again, a
            # warning: neither is left for the user to find in the summary.
            level = logging.ERROR if self._errors_logged == 0 else logging.WARNING
            self._errors_logged += 1
            log.log(
                level,
                "netagg: the switch at %s cannot serve rank %d (bucket %d: %s); buckets go through %s%s",
                self._where(),
                self.rank,
                seq,
                cause,
                self._backend(),
                f", the switch is tried again in {self._backoff:g} s" if self.retry_after else " from now on",
            )
        else:  # a try to go back failed
            self._backoff = min(self._backoff * 2, self.retry_max)
            log.debug(
                "netagg: rank %d, bucket %d: the switch still cannot serve (%s); next try in %g s",
                self.rank,
                seq,
                cause,
                self._backoff,
            )
        self._retry_at = now + self._backoff if self.retry_after is not None else float("inf")

    def _through_gloo(self, tensor: torch.Tensor) -> torch.Tensor:
        self.stats.gloo_buckets += 1
        self.stats.gloo_bytes += tensor.numel() * tensor.element_size()
        if self._group is not None:
            dist.all_reduce(tensor, group=self._group)
        return tensor.div_(self.world_size)  # type: ignore[arg-type]

    # -- agreement between the ranks (the fallback's collectives) ----------------------------------
    def _agree(self, seq: int, size: int, timeout: float | None = None) -> list[list[int]]:
        """Every rank's (bucket number, size, last held switch result, back-off passed)."""
        held = self._held[0] if self._held is not None else -1
        row = [seq, size, held, int(self._clock() >= self._retry_at)]
        if self._group is None:  # one rank: nobody to agree with
            return [row]
        assert self.world_size is not None
        return agree(self._group, self.world_size, row, timeout)

    def _pass_on(self, rows: list[list[int]], seq: int, out: torch.Tensor) -> bool:
        """Ranks at different buckets: the ones behind get the bucket's switch result from one ahead.
        True when this rank got its bucket's result that way."""
        if pass_on(self._group, rows, self.rank, seq, out, self._held):
            self._from_peer(seq, out)
            return True
        return False

    def _from_peer(self, seq: int, out: torch.Tensor) -> None:
        self.stats.switch_buckets += 1
        self.stats.peer_buckets += 1
        self.stats.switch_bytes += out.numel() * out.element_size()
        self._held = (seq, out)
        log.info("netagg: rank %d got bucket %d's switch result from another rank", self.rank, seq)

    def _ensure_group(self) -> None:
        """The fallback's group, made by every rank at its first bucket (a collective, on the thread
        that runs backward, before any of the hook's other collectives)."""
        if self._group is not None or self.world_size == 1:
            return
        if not dist.is_available() or not dist.is_initialized():
            raise NetAggError("the hook needs torch.distributed initialized (its fallback uses it)")
        # A group of its own: the fallback's collectives never interleave with DDP's own (buffer
        # broadcasts in forward), which a rank one bucket ahead may already be issuing.
        self._group = self.process_group or dist.new_group(backend="gloo")
        # A result one rank lost is asked for through init_process_group's store (host_agent/ddp_peers.py).
        NetAggState._instances += 1
        prefix = f"netagg-ddp/{getattr(self._group, 'group_name', '')}/{NetAggState._instances}/"
        store = dist.PrefixStore(prefix, dist.distributed_c10d._get_default_store())
        assert self.rank is not None and self.world_size is not None
        self._peers = PeerResults(store, self.rank, self.world_size, lambda: self._held)

    # -- reporting --------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """What went where, on this rank: ``buckets``; ``switch_buckets``/``switch_bytes`` and
        ``gloo_buckets``/``gloo_bytes`` (bucket sizes); ``peer_buckets`` (switch results passed on by
        another rank); ``fallbacks`` (failed calls through the switch), ``causes`` (cause: count),
        ``retries`` and ``returns`` (tries to go back to the switch, and those that succeeded); and
        ``falling_back`` (whether the last bucket went through the process group)."""
        out = asdict(self.stats)
        out["falling_back"] = self._falling_back_since is not None
        return out

    def log_summary(self, level: int | None = None) -> None:
        """Log :meth:`summary` in one line: INFO, or WARNING when some buckets went through gloo."""
        s = self.summary()
        if level is None:
            level = logging.WARNING if s["gloo_buckets"] else logging.INFO
        log.log(
            level,
            "netagg: rank %d: %d buckets, %d (%.1f MiB) through the switch at %s, %d (%.1f MiB) through %s; "
            "%d failed calls%s, %d tries to go back, %d succeeded",
            self.rank,
            s["buckets"],
            s["switch_buckets"],
            s["switch_bytes"] / 2**20,
            self._where(),
            s["gloo_buckets"],
            s["gloo_bytes"] / 2**20,
            self._backend(),
            s["fallbacks"],
            f" {dict((c[:120], n) for c, n in s['causes'].items())}" if s["causes"] else "",
            s["retries"],
            s["returns"],
        )

    def _where(self) -> str:
        """The switch's address, as the last worker knew it (a controller's job: unknown before that)."""
        return self._switch_seen or self.switch or f"(job {self.job}, controller {self.controller})"

    def _backend(self) -> str:
        if self._group is None:
            return "the process group"
        return str(dist.get_backend(self._group))

    def _close_worker(self) -> None:
        if self._worker is not None:
            self._last_traffic = self._worker.stats.as_dict()
            try:
                self._worker.close()
            finally:
                self._worker = None

    def traffic(self) -> dict[str, int]:
        """This rank's datagrams and bytes to and from the switch (the host agent's counters; the last
        worker's only, when the state made several)."""
        return self._worker.stats.as_dict() if self._worker is not None else dict(self._last_traffic)

    def close(self, timeout: float = 60.0) -> None:
        """Finish pending buckets, release the switch connection and log :meth:`summary`.

        Call it at every rank: when a rank's last call failed after the others had the result, they
        pass it on here (the ranks wait for one another up to ``timeout`` seconds)."""
        with self._lock:
            if self._executor is None:
                return
            self._executor.submit(self._finish, timeout).result()
            self._executor.shutdown(wait=True)
            self._executor = None  # type: ignore[assignment]
        self._close_worker()
        if self._peers is not None:
            self._peers.close()
        self.log_summary()

    def _finish(self, timeout: float) -> None:
        if self._group is None:
            return
        try:
            while True:
                rows = self._agree(self._seq, 0, timeout)
                if min(row[SEQ] for row in rows) == self._seq:
                    return
                self._pass_on(rows, self._seq, torch.empty(0))  # a rank behind: pass the result on
        except (RuntimeError, TimeoutError) as exc:
            log.warning("netagg: rank %d could not agree with the others at close: %s", self.rank, exc)


class _ConfigError(Exception):
    """Carries an error of the first join that is the user's to fix past the fallback."""

    def __init__(self, error: NetAggError) -> None:
        super().__init__(str(error))
        self.error = error


def netagg_hook(state: NetAggState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: the bucket's sum through the switch, divided by the world size.

    Register with ``model.register_comm_hook(NetAggState(switch=...), netagg_hook)``. The returned
    future is completed by the hook's I/O thread; the autograd thread goes on with backward meanwhile.
    """
    state._ensure_group()
    fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()

    def done(job: concurrent.futures.Future[torch.Tensor]) -> None:
        exc = job.exception()
        if exc is not None:
            fut.set_exception(exc)  # type: ignore[arg-type]  # (torch types it as the result type)
        else:
            fut.set_result(job.result())

    state._executor.submit(state._allreduce_bucket, bucket.buffer(), bucket.index()).add_done_callback(done)
    return fut
