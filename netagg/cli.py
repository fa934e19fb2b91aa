"""``netagg``: the command line. Subcommands: switch, allreduce, relay, demo, demo-allreduce."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from netagg.protocol import DEFAULT_PORT, MAX_ELEMENTS, MAX_SLOTS, MAX_WORKERS

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (and exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _address(text: str) -> tuple[str, int]:
    from netagg.protocol import parse_address

    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _int_range(lo: int, hi: int) -> argparse._ActionType:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is outside [{lo}, {hi}]")
        return value

    return parse


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not a probability in [0, 1)")
    return value


def _build() -> argparse.ArgumentParser:
    p = _Parser(prog="netagg", description="In-network aggregation emulator (SwitchML-style).")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("switch", help="run the Python aggregation switch (static single-job mode)")
    s.add_argument(
        "--listen",
        type=_address,
        default=("127.0.0.1", DEFAULT_PORT),
        metavar="HOST:PORT",
        help=f"address to serve on (default 127.0.0.1:{DEFAULT_PORT})",
    )
    s.add_argument(
        "--workers",
        type=_int_range(1, MAX_WORKERS),
        help="workers in the static job (omit with --agent to take jobs from the control plane only)",
    )
    s.add_argument(
        "--agent",
        type=_address,
        metavar="HOST:PORT",
        help="also serve the SwitchAgent gRPC API here (the control plane installs and removes jobs)",
    )
    s.add_argument("--job", type=_int_range(0, 0xFFFF), default=1, help="job id (default 1)")
    s.add_argument(
        "--slots",
        type=_int_range(1, MAX_SLOTS),
        default=None,
        help="slots of the job = each worker's window (default: 16 for packets of 1024 elements or more, "
        "1024 for smaller ones)",
    )
    s.add_argument(
        "--elements",
        type=_int_range(1, MAX_ELEMENTS),
        default=MAX_ELEMENTS,
        help=f"int32 elements per packet; 64 = SwitchML's size (default {MAX_ELEMENTS})",
    )
    s.add_argument(
        "--multicast",
        type=_address,
        metavar="GROUP:PORT",
        help="send each result once to this IPv4 multicast group (e.g. 239.255.0.1:47001) "
        "instead of once per worker; workers join it",
    )
    s.add_argument("--stats-file", type=Path, help="write counters as JSON here (periodically and at exit)")
    s.add_argument("--stats-interval", type=float, default=1.0, help="seconds between stats-file writes")

    a = sub.add_parser("allreduce", help="run allreduces as one worker (for experiments and checks)")
    a.add_argument("--switch", required=True, type=_address, metavar="HOST:PORT")
    a.add_argument("--rank", type=_int_range(0, MAX_WORKERS - 1), required=True)
    a.add_argument("--world-size", type=_int_range(1, MAX_WORKERS), required=True)
    a.add_argument("--job", type=_int_range(0, 0xFFFF), default=1)
    a.add_argument("--size", type=_int_range(1, 1 << 30), default=1 << 20, help="elements per allreduce")
    a.add_argument("--dtype", choices=("float32", "int32"), default="float32")
    a.add_argument("--repeat", type=_int_range(1, 1_000_000), default=10)
    a.add_argument("--timeout", type=float, default=10.0, help="seconds without progress before failing")
    a.add_argument("--seed", type=int, default=0, help="inputs are netagg.verify.inputs(rank, size, seed)")
    a.add_argument(
        "--check",
        action="store_true",
        help="verify the first result against numpy (every rank rebuilds every input); exit 1 if wrong",
    )

    r = sub.add_parser("relay", help="a lossy UDP relay between workers and a switch (for testing)")
    r.add_argument("--listen", type=_address, required=True, metavar="HOST:PORT")
    r.add_argument("--upstream", type=_address, required=True, metavar="HOST:PORT")
    r.add_argument("--loss", type=_fraction, default=0.0, help="drop probability per packet and direction")
    r.add_argument("--dup", type=_fraction, default=0.0, help="duplicate probability")
    r.add_argument("--reorder", type=_fraction, default=0.0, help="probability a packet is held back")
    r.add_argument("--seed", type=int, default=None)

    d = sub.add_parser("demo", help="DDP training through a switch on loopback, against gloo (make demo)")
    d.add_argument("--workers", type=_int_range(1, MAX_WORKERS), default=4)
    d.add_argument("--epochs", type=_int_range(1, 1000), default=20)
    d.add_argument("--out", type=Path, default=Path("out/demo"), help="folder for the JSON and PNG")

    da = sub.add_parser("demo-allreduce", help="W allreduces of 4 B-64 MiB through a switch, checked")
    da.add_argument("--workers", type=_int_range(1, MAX_WORKERS), default=4)
    da.add_argument("--mib", type=_int_range(1, 1024), default=64, help="largest tensor, MiB of float32")
    da.add_argument("--out", type=Path, default=Path("out/demo"), help="folder for the JSON and PNG")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _build().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        if args.command == "switch":
            return _switch(args)
        if args.command == "allreduce":
            return _allreduce(args)
        if args.command == "relay":
            return _relay(args)
        if args.command == "demo-allreduce":
            from netagg.demo import run_demo

            return run_demo(workers=args.workers, max_mib=args.mib, out_dir=args.out)
        from netagg.train_demo import run_train_demo

        return run_train_demo(workers=args.workers, epochs=args.epochs, out_dir=args.out)
    except (ValueError, OSError) as exc:
        print(f"netagg {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def default_slots(elements: int) -> int:
    """The window the switch gives a job by default: measured on the 2-core loopback setup (see README),
    16 large packets keep the data in flight cache-sized; small packets go in GSO runs of 64 and
    need many runs in flight (128 slots: 1.2 s for 16 MiB at W=4; 1024: 0.66 s)."""
    return 16 if elements >= 1024 else 1024


def _stop_on_signals(stop: object) -> None:
    def handler(signum: int, _frame: object) -> None:
        logging.getLogger("netagg").info("signal %d: stopping", signum)
        stop()  # type: ignore[operator]

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _switch(args: argparse.Namespace) -> int:
    from netagg.udpbatch import BATCH_BELOW_ELEMENTS
    from switch.core import Dataplane, JobConfig
    from switch.udp import UdpSwitch

    if args.workers is None and args.agent is None:
        raise ValueError("give --workers for a static job, or --agent to take jobs from the control plane")
    jobs = []
    if args.workers is not None:
        slots = args.slots or default_slots(args.elements)
        jobs.append(
            JobConfig(
                job_id=args.job,
                workers=args.workers,
                slots=slots,
                elements=args.elements,
                multicast=args.multicast,
            )
        )
    server = UdpSwitch(
        Dataplane(jobs),
        *args.listen,
        stats_file=args.stats_file,
        stats_interval=args.stats_interval,
        # Without a static job, jobs of any size may come: batched receives then, which cost large
        # packets little (GRO only coalesces same-size runs).
        gro=not jobs or jobs[0].elements < BATCH_BELOW_ELEMENTS,
    )
    agent = None
    what = "no static job"
    if jobs:
        cfg = jobs[0]
        what = f"job {cfg.job_id}, {cfg.workers} workers, {cfg.slots} slots, {cfg.elements} elements/packet"
    if args.agent is not None:
        from switch.agent import serve_agent

        agent, agent_port = serve_agent(server.dataplane, server.lock, f"{args.agent[0]}:{args.agent[1]}")
        what += f"; SwitchAgent on {args.agent[0]}:{agent_port}"
    _stop_on_signals(server.stop)
    print(f"netagg switch on {server.address[0]}:{server.address[1]}: {what}", flush=True)
    try:
        server.serve_forever()
    finally:
        if agent is not None:
            agent.stop(grace=1.0)
    print(json.dumps(server.dataplane.stats()), flush=True)
    return 0


def _allreduce(args: argparse.Namespace) -> int:
    import time

    from host_agent.worker import Worker
    from netagg.verify import check, inputs

    x = inputs(args.rank, (args.size,), args.dtype, args.seed)
    host, port = args.switch
    times = []
    result: dict[str, object] = {"rank": args.rank, "size": args.size, "dtype": args.dtype}
    with Worker(f"{host}:{port}", args.rank, args.world_size, job=args.job, timeout=args.timeout) as w:
        for i in range(args.repeat):
            t0 = time.perf_counter()
            y = w.allreduce(x)
            times.append(time.perf_counter() - t0)
            if args.check and i == 0:
                result["check"] = check(args.world_size, (args.size,), args.dtype, y, w.elements, args.seed)
        result["worker"] = w.stats.as_dict()
    times.sort()
    result.update(median_s=times[len(times) // 2], min_s=times[0])
    print(json.dumps(result), flush=True)
    ok = not args.check or bool(result["check"]["ok"])  # type: ignore[index]
    return 0 if ok else 1


def _relay(args: argparse.Namespace) -> int:
    from netagg.testing import LossyRelay

    relay = LossyRelay(
        args.listen, args.upstream, loss=args.loss, dup=args.dup, reorder=args.reorder, seed=args.seed
    )
    _stop_on_signals(relay.stop)
    print(
        f"netagg relay {relay.address[0]}:{relay.address[1]} -> {args.upstream[0]}:{args.upstream[1]}",
        flush=True,
    )
    relay.serve_forever()
    print(json.dumps(relay.counters), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
