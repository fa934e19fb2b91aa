"""``netagg allreduce``: one worker's allreduces through a switch, timed and optionally checked."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from netagg.cli._common import _address, _int_range, read_key_file
from netagg.protocol import MAX_WORKERS

__all__ = ["add_parser"]

EXAMPLES = """\
examples:
  netagg allreduce --switch 127.0.0.1:47000 --rank 0 --world-size 4 --size 1000000 --check
  netagg allreduce --switch 10.0.0.201:47000 --rank 2 --world-size 4 --worker-id 0 --no-batch

It prints one JSON line: rank, size, dtype, median_s, min_s, the worker's counters and, with
--check, the check of the result against numpy."""


def add_parser(sub: Any) -> None:
    """Add ``netagg allreduce`` to the subcommands ``sub``."""
    a = sub.add_parser(
        "allreduce", help="run allreduces as one worker (for experiments and checks)", epilog=EXAMPLES
    )
    a.add_argument(
        "--switch", required=True, type=_address, metavar="HOST:PORT", help="the switch's data address"
    )
    a.add_argument("--rank", type=_int_range(0, MAX_WORKERS - 1), required=True, help="this worker's rank")
    a.add_argument("--world-size", type=_int_range(1, MAX_WORKERS), required=True, help="workers in the job")
    a.add_argument("--job", type=_int_range(0, 0xFFFF), default=1, help="the switch's job id (default 1)")
    a.add_argument(
        "--worker-id", type=_int_range(0, MAX_WORKERS - 1), help="id at the switch (default: the rank)"
    )
    a.add_argument("--size", type=_int_range(1, 1 << 30), default=1 << 20, help="elements per allreduce")
    a.add_argument(
        "--dtype", choices=("float32", "int32"), default="float32", help="element type (default float32)"
    )
    a.add_argument(
        "--repeat", type=_int_range(1, 1_000_000), default=10, help="allreduces to time (default 10)"
    )
    a.add_argument("--timeout", type=float, default=10.0, help="seconds without progress before failing")
    a.add_argument(
        "--join-timeout",
        type=float,
        default=60.0,
        help="seconds to wait for every worker to join (default 60; a wait says whom it waits for)",
    )
    a.add_argument(
        "--key-file",
        type=Path,
        metavar="PATH",
        help="the job's key (16 hex digits; default $NETAGG_KEY), for a switch started with --key-file",
    )
    a.add_argument(
        "--seed",
        type=int,
        default=0,
        help="repetitions alternate between netagg.verify.inputs(rank, size, seed) and (..., seed + 1)",
    )
    a.add_argument(
        "--check",
        action="store_true",
        help="verify every result: the first two against numpy (every rank rebuilds every input), the rest "
        "bit for bit against the result of the same inputs; exit 1 if one is wrong",
    )
    a.add_argument("--bind", metavar="HOST:PORT", help="local address to send from (default: any)")
    a.add_argument(
        "--no-batch",
        action="store_true",
        help="no GSO/GRO runs of small packets (for switches that tap links with pcap, such as BMv2)",
    )
    a.set_defaults(run=_allreduce)


def _allreduce(args: argparse.Namespace) -> int:
    import time

    import numpy as np

    from host_agent.worker import Worker
    from netagg.verify import check, inputs

    if not args.timeout > 0 or not args.join_timeout > 0:
        raise ValueError("--timeout and --join-timeout must be positive")
    key = read_key_file(args.key_file) if args.key_file is not None else None

    # Repetitions alternate between two inputs (seeds seed and seed + 1), made before any is timed: each
    # reuse of a slot carries other data than its last use, and no rank makes inputs while others wait.
    xs = [
        (s, inputs(args.rank, (args.size,), args.dtype, s)) for s in (args.seed, args.seed + 1)[: args.repeat]
    ]
    host, port = args.switch
    times = []
    kept: list[np.ndarray] = []  # the results of the first two repetitions, checked after the loop
    same: list[bool] = []  # later repetitions: bit for bit the result of the same inputs before
    result: dict[str, object] = {"rank": args.rank, "size": args.size, "dtype": args.dtype}
    with Worker(
        f"{host}:{port}",
        args.rank,
        args.world_size,
        job=args.job,
        worker_id=args.worker_id,
        timeout=args.timeout,
        join_timeout=args.join_timeout,
        key=key,
        bind=args.bind,
        batch=not args.no_batch,
    ) as w:
        for i in range(args.repeat):
            x = xs[i % len(xs)][1]
            t0 = time.perf_counter()
            y = w.allreduce(x)  # a new array each time
            times.append(time.perf_counter() - t0)
            if args.check:  # between timed calls only what costs one pass: no rank waits for another's check
                if i < len(xs):
                    kept.append(y)
                else:
                    same.append(bool(np.array_equal(y, kept[i % len(xs)])))
        result["worker"] = w.stats.as_dict()
    if args.check:  # every repetition checked: the first two against numpy, the rest against those
        checks = [
            check(args.world_size, (args.size,), args.dtype, y, w.elements, s)
            for (s, _), y in zip(xs, kept, strict=True)
        ]
        oks = [c["ok"] for c in checks] + [
            ok and checks[i % len(xs)]["ok"] for i, ok in enumerate(same, len(xs))
        ]
        failed = [i for i, ok in enumerate(oks) if not ok]
        result["check"] = {
            "ok": not failed,
            "repetitions": len(oks),
            "failed": failed,
            "max_err": max(c["max_err"] for c in checks),
            "max_err_over_bound": max(c.get("max_err_over_bound", 0.0) for c in checks),
            **(
                {
                    "first_failure": checks[failed[0]]
                    if failed[0] < len(checks)
                    else "differs from the same inputs' result"
                }
                if failed
                else {}
            ),
        }
    times.sort()
    result.update(median_s=times[len(times) // 2], min_s=times[0])
    print(json.dumps(result), flush=True)
    ok = not args.check or bool(result["check"]["ok"])  # type: ignore[index]
    return 0 if ok else 1
