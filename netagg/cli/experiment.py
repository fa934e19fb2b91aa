"""``netagg experiment``: a topology in network namespaces, its switches and an allreduce sweep
(:mod:`mininet_topos.experiment` does the work; this module checks the flags)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from netagg.cli._common import _int_range

__all__ = ["add_parser"]

EXAMPLES = """\
examples:
  sudo netagg experiment --topo leafspine --leaves 2 --hosts-per-leaf 1,2,3 \\
       --sizes 1,4,16,64 --loss 0,1,5 --out out/experiment
  sudo netagg experiment --topo star --hosts 2,4 --sizes 1 --loss 0 --repeat 1

It writes experiment.json, experiment.png and topology.json into --out."""


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
    e.add_argument("--sizes", default="1,4,16,64", help="MiB of float32 per host, comma-separated")
    e.add_argument("--loss", default="0,1,5", help="loss on every link in percent, comma-separated")
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

    from mininet_topos.experiment import run_experiment

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

    sizes, losses = numbers(args.sizes, "sizes"), numbers(args.loss, "loss")
    if any(x >= 100 for x in losses):
        raise ValueError("--loss is in percent, below 100")

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
    return run_experiment(
        args.topo, topo_args, sizes, losses, args.out, repeat=args.repeat, elements=args.elements
    )
