"""``netagg``'s entry point: the parser, assembled from one module per subcommand, and :func:`main`.

Each subcommand module has ``add_parser(sub)``, which adds its parser with an example (the epilog) and
a description of every flag, and sets ``run``: the function that runs it with the parsed arguments.
Those functions import what they drive (the switch, the host agent, the controller, the topologies)
when they run, so ``netagg --help`` and a bad flag stay fast and need none of them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import netagg
from netagg.cli import (
    allreduce,
    bmv2,
    controller,
    ctl,
    demo,
    demo_allreduce,
    experiment,
    model,
    relay,
    switch,
)
from netagg.cli._common import _Parser

__all__ = ["main"]

EXAMPLES = """\
examples:
  netagg switch --workers 4                  # a switch on 127.0.0.1:47000 for one job of 4 workers
  netagg allreduce --switch 127.0.0.1:47000 --rank 0 --world-size 4 --check
  netagg controller --db jobs.db             # the control plane; then netagg ctl ...
  netagg demo                                # DDP through a switch against gloo (make demo)

`netagg COMMAND --help` shows each command's flags and examples."""

#: The subcommands in the order --help lists them.
SUBCOMMANDS = (switch, controller, bmv2, experiment, model, ctl, allreduce, relay, demo, demo_allreduce)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="netagg", description="In-network aggregation emulator (SwitchML-style).", epilog=EXAMPLES
    )
    p.add_argument("--version", action="version", version=f"netagg {netagg.__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``netagg`` with ``argv`` (default: the process's arguments); returns the exit status."""
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return int(args.run(args))
    except (ValueError, OSError) as exc:
        print(f"netagg {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
