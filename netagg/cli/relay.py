"""``netagg relay``: a lossy UDP relay between workers and a switch (loss, duplication, reordering)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from netagg.cli._common import _address, _fraction, _ready, _ready_flag
from netagg.service import stop_on_signals

__all__ = ["add_parser"]

EXAMPLES = """\
examples:
  netagg switch --listen 127.0.0.1:47000 --workers 4 &
  netagg relay --listen 127.0.0.1:47100 --upstream 127.0.0.1:47000 --loss 0.05 --dup 0.01 --reorder 0.02
  # then point the workers at 127.0.0.1:47100

Once serving it prints one JSON line on stdout (or into --ready-file), and its counters as one JSON
line when it stops (SIGINT/SIGTERM)."""


def add_parser(sub: Any) -> None:
    """Add ``netagg relay`` to the subcommands ``sub``."""
    r = sub.add_parser(
        "relay", help="a lossy UDP relay between workers and a switch (for testing)", epilog=EXAMPLES
    )
    r.add_argument(
        "--listen", type=_address, required=True, metavar="HOST:PORT", help="address the workers send to"
    )
    r.add_argument(
        "--upstream", type=_address, required=True, metavar="HOST:PORT", help="the switch it relays to"
    )
    r.add_argument("--loss", type=_fraction, default=0.0, help="drop probability per packet and direction")
    r.add_argument("--dup", type=_fraction, default=0.0, help="duplicate probability")
    r.add_argument("--reorder", type=_fraction, default=0.0, help="probability a packet is held back")
    r.add_argument("--seed", type=int, default=None, help="random seed of the impairments (default: random)")
    _ready_flag(r)
    r.set_defaults(run=_relay)


def _relay(args: argparse.Namespace) -> int:
    from netagg.testing import LossyRelay

    relay = LossyRelay(
        args.listen, args.upstream, loss=args.loss, dup=args.dup, reorder=args.reorder, seed=args.seed
    )
    stop_on_signals(relay.stop)
    address = f"{relay.address[0]}:{relay.address[1]}"
    upstream = f"{args.upstream[0]}:{args.upstream[1]}"
    _ready(args, "relay", f"netagg relay {address} -> {upstream}", address=address, upstream=upstream)
    relay.serve_forever()
    print(json.dumps(relay.counters), flush=True)
    return 0
