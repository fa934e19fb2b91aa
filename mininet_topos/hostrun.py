"""What the experiment runs on each host (``python -m mininet_topos.hostrun ...`` under ``ip netns
exec``): a collective through netagg's switches or over gloo's ring, and plain TCP for the forwarding
check. Each prints one JSON line.

    hostrun collective --impl netagg --switch 10.0.0.202:47000 --worker-id 1 --rank 1 --world-size 8 \\
        --collective allreduce --size 16777216 --repeat 3 --check
    hostrun collective --impl gloo --master 10.0.0.1:29500 --rank 1 --world-size 8 ...
    hostrun tcp-recv --listen 10.0.0.8:5001       # prints {"bytes": ..., "seconds": ...}
    hostrun tcp-send --to 10.0.0.8:5001 --bytes 50000000

Every repetition starts after a barrier of the implementation's own (so one rank's late start is not
timed) and reports each repetition's time; the caller takes the slowest rank's per repetition. Inputs
are :func:`netagg.verify.inputs` (float32), different for each repetition pair as in ``netagg
allreduce``; with ``--check`` the first repetition's result is checked against numpy: netagg's
allreduce against the documented quantization bound (its reduce-scatter against the same bound taken
with the shard's largest magnitude), gloo's within float32 rounding of the sum (W * 2**-23 * sum |x|),
every all-gather bit for bit.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["COLLECTIVES", "expected", "main"]

COLLECTIVES = ("allreduce", "reduce_scatter", "all_gather")
CHUNK = 1 << 20


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def expected(collective: str, rank: int, world: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(exact result in float64, sum of magnitudes behind each element) of ``collective`` at ``rank``
    for :func:`netagg.verify.inputs` of ``size`` elements at every rank."""
    from netagg.verify import inputs

    if collective == "all_gather":
        got = np.concatenate([inputs(r, (size,), "float32", seed) for r in range(world)])
        return got.astype(np.float64), np.zeros(got.size)
    exact, mags = np.zeros(size), np.zeros(size)
    for r in range(world):
        x = inputs(r, (size,), "float32", seed).astype(np.float64)
        exact += x
        mags += np.abs(x)
    if collective == "reduce_scatter":
        s = size // world
        return exact[rank * s : (rank + 1) * s], mags[rank * s : (rank + 1) * s]
    return exact, mags


def _netagg(args: argparse.Namespace) -> tuple[Callable[[np.ndarray], Any], Callable[[], None], Any]:
    from host_agent.worker import Worker

    w = Worker(
        f"{args.switch[0]}:{args.switch[1]}",
        args.rank,
        args.world_size,
        worker_id=args.worker_id,
        timeout=args.timeout,
        join_timeout=120,
        batch=not args.no_batch,
        min_rto=args.min_rto,
    )
    call = {"allreduce": w.allreduce, "reduce_scatter": w.reduce_scatter, "all_gather": w.all_gather}
    return call[args.collective], w.barrier, w


def _gloo(args: argparse.Namespace) -> tuple[Callable[[np.ndarray], Any], Callable[[], None], Any]:
    # torch loads every installed device backend at import (netagg's own among them, where installed):
    # the ring needs none of them
    os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "eth0")
    host, port = args.master
    dist.init_process_group(
        "gloo", init_method=f"tcp://{host}:{port}", rank=args.rank, world_size=args.world_size
    )
    world = args.world_size

    def run(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(x)
        if args.collective == "allreduce":
            dist.all_reduce(t)  # in place: gloo's ring allreduce
            return t.numpy()
        if args.collective == "reduce_scatter":
            out = torch.empty(x.size // world, dtype=t.dtype)
            dist.reduce_scatter_tensor(out, t)
            return out.numpy()
        out = torch.empty(x.size * world, dtype=t.dtype)
        dist.all_gather_into_tensor(out, t)
        return out.numpy()

    return run, dist.barrier, dist


def _collective(args: argparse.Namespace) -> dict[str, Any]:
    from netagg.verify import allreduce_error_bound, inputs

    if args.collective == "reduce_scatter" and args.size % args.world_size:
        raise ValueError(f"reduce_scatter needs a multiple of the world size, got {args.size}")
    xs = [inputs(args.rank, (args.size,), "float32", s) for s in (args.seed, args.seed + 1)[: args.repeat]]
    run, barrier, handle = (_netagg if args.impl == "netagg" else _gloo)(args)
    times, first = [], None
    elements = handle.elements if args.impl == "netagg" else 0
    try:
        for i in range(args.repeat):
            x = xs[i % len(xs)].copy()  # gloo reduces in place
            barrier()
            t0 = time.perf_counter()
            y = run(x)
            times.append(time.perf_counter() - t0)
            if i == 0:
                first = np.array(y, copy=True)
        barrier()
        stats = handle.stats.as_dict() if args.impl == "netagg" else {}
    finally:
        if args.impl == "netagg":
            handle.close()
        else:
            handle.destroy_process_group()
    out: dict[str, Any] = {
        "impl": args.impl,
        "collective": args.collective,
        "rank": args.rank,
        "size": args.size,
        "times_s": times,
        "worker": stats,
    }
    if args.check and first is not None:
        exact, mags = expected(args.collective, args.rank, args.world_size, args.size, args.seed)
        err = np.abs(first.astype(np.float64) - exact)
        if args.collective == "all_gather":
            bound = np.zeros_like(err)  # bit for bit
        elif args.impl == "netagg" and args.collective == "allreduce":
            everyone = [inputs(r, (args.size,), "float32", args.seed) for r in range(args.world_size)]
            bound = allreduce_error_bound(everyone, first, elements)
        elif args.impl == "netagg":  # the quantization bound with the shard's largest magnitude
            top = max(float(np.abs(x).max(initial=0.0)) for x in _shards(args))
            bits = 30 - (args.world_size - 1).bit_length()
            bound = args.world_size * 2.0 ** (np.frexp(top)[1] - bits) + 2.0**-23 * np.abs(exact) + 2.0**-140
        else:
            bound = args.world_size * 2.0**-23 * mags + 2.0**-140
        out["check"] = {
            "ok": bool(first.shape == exact.shape and (err <= bound).all()),
            "max_err": float(err.max(initial=0.0)),
        }
    return out


def _shards(args: argparse.Namespace) -> list[np.ndarray]:
    """Every rank's part of this rank's reduce-scatter shard."""
    from netagg.verify import inputs

    s = args.size // args.world_size
    lo = args.rank * s
    return [inputs(r, (args.size,), "float32", args.seed)[lo : lo + s] for r in range(args.world_size)]


def _tcp_recv(args: argparse.Namespace) -> dict[str, Any]:
    with socket.create_server(args.listen) as server:
        print(json.dumps({"event": "listening"}), flush=True)
        conn, _ = server.accept()
        with conn:
            buf = bytearray(CHUNK)
            total, t0 = 0, None
            while n := conn.recv_into(buf):
                t0 = t0 or time.perf_counter()
                total += n
            seconds = time.perf_counter() - (t0 or time.perf_counter())
    return {"bytes": total, "seconds": seconds, "mbit_per_s": 8e-6 * total / seconds if seconds else 0.0}


def _tcp_send(args: argparse.Namespace) -> dict[str, Any]:
    """Send ``--bytes`` (fewer if ``--seconds`` pass first: a slow forwarder is measured, not waited
    for)."""
    data = b"\0" * (64 << 10)
    t0 = time.perf_counter()
    deadline = t0 + args.seconds
    sent = 0
    with socket.create_connection(args.to, timeout=args.seconds) as s:
        try:
            while sent < args.bytes and time.perf_counter() < deadline:
                s.sendall(data[: min(args.bytes - sent, len(data))])
                sent += min(args.bytes - sent, len(data))
        except TimeoutError:
            pass
    return {"bytes": sent, "seconds": time.perf_counter() - t0}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hostrun", description=__doc__)
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("collective")
    c.add_argument("--impl", choices=("netagg", "gloo"), required=True)
    c.add_argument("--collective", choices=COLLECTIVES, default="allreduce")
    c.add_argument("--rank", type=int, required=True)
    c.add_argument("--world-size", type=int, required=True)
    c.add_argument("--size", type=int, required=True, help="float32 elements at each rank")
    c.add_argument("--repeat", type=int, default=3)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--check", action="store_true")
    c.add_argument("--switch", type=_address, help="netagg: the host's switch (HOST:PORT)")
    c.add_argument("--worker-id", type=int, help="netagg: the id at that switch")
    c.add_argument("--no-batch", action="store_true", help="netagg: no GSO runs")
    c.add_argument("--timeout", type=float, default=60.0, help="netagg: seconds without progress")
    c.add_argument("--min-rto", type=float, help="netagg: the shortest retransmission timeout (s)")
    c.add_argument("--master", type=_address, help="gloo: rank 0's HOST:PORT for the rendezvous")
    r = sub.add_parser("tcp-recv")
    r.add_argument("--listen", type=_address, required=True)
    s = sub.add_parser("tcp-send")
    s.add_argument("--to", type=_address, required=True)
    s.add_argument("--bytes", type=int, required=True)
    s.add_argument("--seconds", type=float, default=20.0, help="stop sending after this long")
    args = p.parse_args(argv)
    if args.what == "collective":
        if args.impl == "netagg" and args.switch is None:
            p.error("--impl netagg needs --switch")
        if args.impl == "gloo" and args.master is None:
            p.error("--impl gloo needs --master")
        result = _collective(args)
    else:
        result = (_tcp_recv if args.what == "tcp-recv" else _tcp_send)(args)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
