"""``netagg switch``: the Python aggregation switch (a static job, or jobs from the control plane)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from netagg.cli._common import (
    TOKEN_ENV,
    _address,
    _apply_verbose,
    _auth_flags,
    _fraction,
    _int_range,
    _listen_flag,
    _metrics_flag,
    _ready,
    _ready_flag,
    _server_tokens,
    _verbose_flag,
    read_key_file,
)
from netagg.protocol import DEFAULT_PORT, MAX_ELEMENTS, MAX_SLOTS, MAX_WORKERS

if TYPE_CHECKING:
    from switch.daemon import Registration

__all__ = ["add_parser"]

EXAMPLES = """\
examples:
  netagg switch --workers 4                          # one job of 4 workers on 127.0.0.1:47000
  netagg switch --workers 4 --multicast 239.255.0.1:47001 --stats-file stats.json
  netagg switch --workers 2 --key-file job.key --metrics 127.0.0.1:9470 --pcap switch.pcap -v
  netagg switch --controller 127.0.0.1:47100 --token-file tokens --total-slots 1024
  netagg switch --ethernet eth0,eth1,eth2 --ip 10.0.0.201 --workers 2 --total-workers 4 \\
                --parent 10.0.0.203:47000 --parent-worker 0     # a leaf switch node of a tree

Once serving it prints one JSON line on stdout (or into --ready-file):
  {"event": "ready", "role": "switch", "data": "127.0.0.1:47000", "agent": null, "metrics": null, ...}
and its counters as one JSON line when it stops (SIGINT/SIGTERM).

A --pcap file opens with scapy, tcpdump and tshark; netagg's scapy layer decodes the switch's port
(47000 by itself; another port after switch.pcap.bind_netagg(PORT))."""


def add_parser(sub: Any) -> None:
    """Add ``netagg switch`` to the subcommands ``sub``."""
    s = sub.add_parser(
        "switch", help="run the Python aggregation switch (static single-job mode)", epilog=EXAMPLES
    )
    _listen_flag(s, DEFAULT_PORT)
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
    s.add_argument(
        "--ethernet",
        metavar="IFACE[,IFACE...]",
        help="be a switch node on these interfaces (raw Ethernet: L2 switching, ARP, aggregation for "
        "--ip); instead of a UDP socket on --listen",
    )
    s.add_argument("--ip", help="with --ethernet: the aggregator's IPv4 address")
    s.add_argument("--mac", help="with --ethernet: its MAC (default: the first interface's)")
    s.add_argument(
        "--ingress-loss",
        type=_fraction,
        default=0.0,
        help="with --ethernet: drop each received frame with this probability (lossy links without netem)",
    )
    s.add_argument(
        "--total-workers",
        type=_int_range(1, 1 << 16),
        help="workers in the whole job when this switch is part of a tree (default: --workers)",
    )
    s.add_argument(
        "--parent",
        type=_address,
        metavar="HOST:PORT",
        help="aggregation tree: send each complete use's partial sum to this parent switch",
    )
    s.add_argument(
        "--parent-worker",
        type=_int_range(0, MAX_WORKERS - 1),
        default=0,
        help="this switch's worker id at the parent",
    )
    s.add_argument(
        "--key-file",
        type=Path,
        metavar="PATH",
        help="the static job's key: a file holding 16 hex digits (docs/protocol.md, Job keys); JOINs "
        "without it are dropped (bad_key). Default: no key",
    )
    s.add_argument(
        "--join-refresh",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="a member counts towards a JOIN round for this long after its last JOIN (default 2)",
    )
    _metrics_flag(s, "per-switch and per-job packets, bytes, completions, drops by reason, members, epoch")
    s.add_argument(
        "--pcap",
        type=Path,
        metavar="FILE",
        help="write every datagram the switch receives and sends to this pcap file (UDP only; made-up "
        "Ethernet/IP/UDP headers with the real addresses and ports). Costs nothing when not given",
    )
    s.add_argument("--stats-file", type=Path, help="write counters as JSON here (periodically and at exit)")
    s.add_argument("--stats-interval", type=float, default=1.0, help="seconds between stats-file writes")
    s.add_argument(
        "--total-slots",
        type=_int_range(1, MAX_SLOTS),
        default=MAX_SLOTS,
        help=f"slots the control plane may give out on this switch (default {MAX_SLOTS})",
    )
    s.add_argument(
        "--controller",
        type=_address,
        metavar="HOST:PORT",
        help="register with this controller (implies --agent 127.0.0.1:0 unless --agent is given)",
    )
    s.add_argument("--switch-id", help="id to register under (default: HOST:PORT of the data plane)")
    s.add_argument(
        "--parent-switch",
        metavar="SWITCH_ID",
        help="register this switch as a child of that one in the fabric (a leaf's spine): the controller "
        "builds aggregation trees along these links",
    )
    s.add_argument(
        "--advertise",
        metavar="HOST",
        help="host name or address workers and the controller reach this switch at "
        "(default: the --listen host; needed when listening on 0.0.0.0)",
    )
    _auth_flags(s, server=True)
    _ready_flag(s)
    _verbose_flag(s, "joins, completed rounds, offers and refusals")
    s.set_defaults(run=_switch)


def _switch(args: argparse.Namespace) -> int:
    from netagg.protocol import static_job_slots
    from switch.core import JobConfig
    from switch.daemon import AgentOptions, PythonSwitchOptions, run_python_switch

    _apply_verbose(args)
    if args.controller is not None and args.agent is None:
        args.agent = ("127.0.0.1", 0)
    if args.workers is None and args.agent is None:
        raise ValueError(
            "give --workers for a static job, or --agent/--controller to take jobs from the control plane"
        )
    if args.key_file is not None and args.workers is None:
        raise ValueError(
            "--key-file is the static job's key: give --workers too (the controller keys its jobs)"
        )
    if not args.join_refresh > 0:
        raise ValueError(f"--join-refresh must be positive, got {args.join_refresh}")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    agent = None
    if args.agent is not None:
        tokens = _server_tokens(args)
        if tokens is None:
            raise ValueError(
                f"--agent needs --token or --token-file (or ${TOKEN_ENV}): the SwitchAgent is authenticated"
            )
        agent = AgentOptions(args.agent, tokens, tls_cert=args.tls_cert, tls_key=args.tls_key)
    jobs = []
    if args.workers is not None:
        slots = args.slots or static_job_slots(args.elements)
        jobs.append(
            JobConfig(
                job_id=args.job,
                workers=args.workers,
                slots=slots,
                elements=args.elements,
                multicast=args.multicast,
                total_workers=args.total_workers,
                parent=args.parent,
                parent_worker=args.parent_worker,
                key=read_key_file(args.key_file) if args.key_file is not None else 0,
            )
        )
    if args.ethernet and not args.ip:
        raise ValueError("--ethernet needs --ip (the aggregator's address)")
    options = PythonSwitchOptions(
        jobs=tuple(jobs),
        listen=args.listen,
        ethernet=tuple(args.ethernet.split(",")) if args.ethernet else (),
        ip=args.ip,
        mac=args.mac,
        ingress_loss=args.ingress_loss,
        stats_file=args.stats_file,
        stats_interval=args.stats_interval,
        total_slots=args.total_slots,
        agent=agent,
        register=_registration(args) if agent is not None else None,
        join_refresh=args.join_refresh,
        metrics=args.metrics,
        pcap=args.pcap,
    )
    stats = run_python_switch(options, lambda banner, fields: _ready(args, "switch", banner, **fields))
    print(json.dumps(stats), flush=True)
    return 0


def _registration(args: argparse.Namespace) -> Registration | None:
    """--controller and the flags that go with it, for switch.daemon (None without --controller)."""
    if args.controller is None:
        return None
    from netagg.rpc import read_token
    from switch.daemon import Registration

    return Registration(
        controller=args.controller,
        token=read_token(args.token, args.token_file),
        tls_ca=args.tls_ca,
        switch_id=args.switch_id,
        advertise=args.advertise,
        parent_switch=getattr(args, "parent_switch", None),
    )
