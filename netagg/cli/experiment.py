"""``netagg experiment``: a topology in network namespaces with rate-limited links, its switches, and
netagg against gloo's ring on the same hosts and links (:mod:`mininet_topos.experiment` does the work;
this module checks the flags)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from netagg.cli._common import _int_range

__all__ = ["add_parser"]

EXAMPLES = """\
examples:
  sudo netagg experiment --topo leafspine --leaves 2 --hosts-per-leaf 4 --bw 100 --sizes 64 --loss 0
  sudo netagg experiment --topo leafspine --leaves 2 --hosts-per-leaf 1,2,3,4 --bw 100 \\
       --sizes 1,4,16,64 --loss 0 --out out/experiment
  sudo netagg experiment --topo leafspine --hosts-per-leaf 4 --bw 100 --sizes 16 --loss 0,1 \\
       --collectives allreduce,reduce_scatter,all_gather --train small,big --epochs 3
  sudo netagg experiment --topo star --hosts 2 --bw 100 --link h1-s1:bw=20 --sizes 1 --repeat 1

Each case runs netagg through the switch tree and gloo's ring (torch.distributed over TCP) on the same
hosts, alternating, and reads every link's byte counters; a plain-TCP check first measures what the
switch nodes' forwarding lets through. It writes experiment.json, experiment.png and topology.json
into --out."""


def add_parser(sub: Any) -> None:
    """Add ``netagg experiment`` to the subcommands ``sub``."""
    e = sub.add_parser(
        "experiment",
        help="build a topology in namespaces, run its switches and an allreduce sweep (root)",
        epilog=EXAMPLES,
    )
    e.add_argument(
        "--topo",
        choices=("star", "leafspine", "tree"),
        default="leafspine",
        help="the topology (mininet_topos.topology; default leafspine)",
    )
    e.add_argument("--hosts", default="4", help="star: hosts (comma-separated: a sweep over workers)")
    e.add_argument("--leaves", type=_int_range(1, 16), default=2, help="leafspine: leaf switches")
    e.add_argument(
        "--hosts-per-leaf",
        default="2",
        help="leafspine: hosts per leaf (comma-separated: a sweep over workers)",
    )
    e.add_argument("--depth", type=_int_range(1, 4), default=2, help="tree: levels of switches")
    e.add_argument("--fanout", type=_int_range(1, 8), default=2, help="tree: children per switch")
    e.add_argument(
        "--sizes",
        default="1,4,16,64",
        help="MiB of float32 per host, comma-separated (empty with --train: training alone)",
    )
    e.add_argument("--loss", default="0", help="loss on every link in percent, comma-separated")
    e.add_argument(
        "--bw",
        default="",
        metavar="MBIT",
        help="bandwidth of every link in Mbit/s (tc tbf on both ends), comma-separated for a sweep; "
        "default: unlimited",
    )
    e.add_argument("--delay", type=float, metavar="MS", help="one-way delay on every link (needs tc netem)")
    e.add_argument(
        "--link",
        action="append",
        default=[],
        metavar="A-B:bw=MBIT,delay=MS,loss=PCT",
        help="parameters of one link (repeatable), e.g. leaf1-spine1:bw=50; the rest as above",
    )
    e.add_argument(
        "--forwarding",
        choices=("bridge", "python"),
        default="bridge",
        help="switch nodes: a kernel bridge with the Python switch as a UDP daemon on it (default), or "
        "the Python switch as a raw-Ethernet node forwarding everything itself",
    )
    e.add_argument(
        "--collectives",
        default="allreduce",
        help="comma-separated: allreduce, reduce_scatter, all_gather (default allreduce)",
    )
    e.add_argument("--no-baseline", action="store_true", help="netagg only, no gloo ring")
    e.add_argument(
        "--slots", type=_int_range(1, 1024), default=128, help="slots of the job (each worker's window)"
    )
    e.add_argument(
        "--host-nice",
        type=_int_range(0, 19),
        default=5,
        help="niceness added to every host process, netagg's and gloo's alike (default 5: the switch "
        "daemons stand for switch hardware and must not starve behind the hosts)",
    )
    e.add_argument(
        "--min-rto",
        type=float,
        default=0.2,
        metavar="SECONDS",
        help="the workers' shortest retransmission timeout (default 0.2: see ExperimentOptions.min_rto)",
    )
    e.add_argument(
        "--train",
        default="",
        help="DDP training workloads on the largest shape, comma-separated: small (the demo's MLP), big",
    )
    e.add_argument("--epochs", type=_int_range(1, 1000), default=3, help="epochs of each training run")
    e.add_argument(
        "--repeat", type=_int_range(1, 100), default=3, help="allreduces per case; times are medians"
    )
    e.add_argument(
        "--elements", type=_int_range(1, 2000), default=2000, help="elements per packet (MTU 9000)"
    )
    e.add_argument(
        "--out", type=Path, default=Path("out/experiment"), help="folder for the JSON, PNG and topology"
    )
    e.set_defaults(run=_experiment)


def _experiment(args: argparse.Namespace) -> int:
    import os

    from mininet_topos.experiment import ExperimentOptions, run_experiment
    from mininet_topos.hostrun import COLLECTIVES
    from mininet_topos.training import MODELS

    if os.geteuid() != 0:
        raise ValueError("needs root (it creates network namespaces)")

    def numbers(text: str, what: str) -> list[float]:
        try:
            values = [float(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"--{what}: expected comma-separated numbers, got {text!r}") from None
        if not values or any(v < 0 for v in values):
            raise ValueError(f"--{what}: expected non-negative numbers, got {text!r}")
        return values

    losses = numbers(args.loss, "loss")
    sizes = numbers(args.sizes, "sizes") if args.sizes.strip() or not args.train.strip() else []
    if any(x >= 100 for x in losses):
        raise ValueError("--loss is in percent, below 100")
    bandwidths: list[float | None] = list(numbers(args.bw, "bw")) if args.bw.strip() else [None]
    if any(b == 0 for b in bandwidths):
        raise ValueError("--bw must be positive (leave it out for unlimited links)")
    collectives = tuple(c.strip() for c in args.collectives.split(",") if c.strip())
    bad = [c for c in collectives if c not in COLLECTIVES]
    if bad or not collectives:
        raise ValueError(
            f"--collectives: expected some of {', '.join(COLLECTIVES)}, got {args.collectives!r}"
        )
    train = tuple(m.strip() for m in args.train.split(",") if m.strip())
    if any(m not in MODELS for m in train):
        raise ValueError(f"--train: expected some of {', '.join(MODELS)}, got {args.train!r}")
    if not 0 < args.min_rto <= 0.5:
        raise ValueError(
            f"--min-rto must be in (0, 0.5] seconds (the workers' largest RTO), got {args.min_rto}"
        )
    if args.delay is not None and args.delay < 0:
        raise ValueError("--delay must not be negative")

    def counts(text: str, what: str) -> list[int]:
        values = [int(v) for v in numbers(text, what)]
        if any(not 1 <= v <= 32 for v in values):
            raise ValueError(f"--{what}: expected counts from 1 to 32, got {text!r}")
        return values

    topo_args: list[dict[str, int]] = {
        "star": [{"hosts": n} for n in counts(args.hosts, "hosts")],
        "leafspine": [
            {"leaves": args.leaves, "hosts_per_leaf": n}
            for n in counts(args.hosts_per_leaf, "hosts-per-leaf")
        ],
        "tree": [{"depth": args.depth, "fanout": args.fanout}],
    }[args.topo]
    options = ExperimentOptions(
        sizes_mib=tuple(sizes),
        losses=tuple(losses),
        bandwidths=tuple(bandwidths),
        delay_ms=args.delay,
        link_overrides=tuple(parse_link(text) for text in args.link),
        collectives=collectives,
        repeat=args.repeat,
        elements=args.elements,
        slots=args.slots,
        min_rto=args.min_rto,
        host_nice=args.host_nice,
        forwarding=args.forwarding,
        baseline=not args.no_baseline,
        train=train,
        epochs=args.epochs,
    )
    return run_experiment(args.topo, topo_args, out_dir=args.out, options=options)


def parse_link(text: str) -> tuple[str, str, float | None, float | None, float]:
    """``A-B:bw=MBIT,delay=MS,loss=PCT`` (any of the three) -> (a, b, bandwidth, delay, loss)."""
    ends, _, params = text.partition(":")
    a, _, b = ends.partition("-")
    if not a or not b or not params:
        raise ValueError(f"--link: expected A-B:bw=MBIT,delay=MS,loss=PCT, got {text!r}")
    values: dict[str, float] = {}
    for item in params.split(","):
        key, _, value = item.partition("=")
        if key not in ("bw", "delay", "loss"):
            raise ValueError(f"--link {text!r}: unknown parameter {key!r} (bw, delay, loss)")
        try:
            values[key] = float(value)
        except ValueError:
            raise ValueError(f"--link {text!r}: {key} needs a number, got {value!r}") from None
        if values[key] < 0 or (key == "loss" and values[key] >= 100) or (key == "bw" and values[key] == 0):
            raise ValueError(f"--link {text!r}: {key}={value} is out of range")
    return a, b, values.get("bw"), values.get("delay"), values.get("loss", 0.0)
