"""``netagg bmv2``: BMv2's ``simple_switch`` with netagg's P4 program, and its SwitchAgent (the driver)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from netagg.cli._common import (
    TOKEN_ENV,
    _address,
    _apply_verbose,
    _auth_flags,
    _metrics_flag,
    _ready,
    _ready_flag,
    _server_tokens,
    _verbose_flag,
)
from netagg.cli.switch import _registration

__all__ = ["add_parser"]

EXAMPLES = """\
examples:
  make p4      # build/p4/netagg.json
  sudo netagg bmv2 -i 1@veth1 -i 2@veth2 --switch-ip 10.0.0.254 \\
       --host 10.0.0.1,02:00:00:00:00:01,1 --host 10.0.0.2,02:00:00:00:00:02,2 \\
       --token-file tokens --controller 127.0.0.1:47100

Once serving it prints one JSON line on stdout (or into --ready-file):
  {"event": "ready", "role": "bmv2", "data": "10.0.0.254:47000", "agent": "127.0.0.1:40123", ...}"""


def add_parser(sub: Any) -> None:
    """Add ``netagg bmv2`` to the subcommands ``sub``."""
    b = sub.add_parser(
        "bmv2",
        help="run simple_switch with netagg's P4 program and serve its SwitchAgent (the BMv2 driver)",
        epilog=EXAMPLES,
    )
    b.add_argument(
        "--json", type=Path, default=Path("build/p4/netagg.json"), help="compiled program (make p4)"
    )
    b.add_argument(
        "-i",
        "--interface",
        action="append",
        required=True,
        metavar="PORT@IFACE",
        help="a BMv2 port and its Linux interface, as simple_switch takes them (repeat)",
    )
    b.add_argument(
        "--switch-ip", required=True, help="the aggregator's IPv4 address (workers send to IP:47000)"
    )
    b.add_argument(
        "--switch-mac", default="02:00:00:00:00:fe", help="its MAC (the program answers ARP for it)"
    )
    b.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="IP,MAC,PORT",
        help="a host behind a port (repeat): L2 forwarding and result replication use them",
    )
    b.add_argument(
        "--agent", type=_address, default=("127.0.0.1", 0), metavar="HOST:PORT", help="SwitchAgent address"
    )
    b.add_argument("--controller", type=_address, metavar="HOST:PORT", help="register with this controller")
    b.add_argument("--switch-id", help="id to register under (default: bmv2-SWITCH_IP)")
    b.add_argument("--advertise", metavar="HOST", help="host the controller reaches the agent at")
    b.add_argument("--log-file", type=Path, help="simple_switch's log (slows it down)")
    b.add_argument(
        "--log-level",
        # switch.bmv2.LOG_LEVELS (not imported here: it pulls in grpc); test_p4_sources ties the two
        choices=("trace", "debug", "info", "warn", "error", "off"),
        help="simple_switch --log-level (default: trace with --log-file, else off)",
    )
    _metrics_flag(
        b, "BMv2's counters, switch-wide only (its counter arrays are not per job; bytes are frames)"
    )
    _auth_flags(b, server=True)
    _ready_flag(b)
    _verbose_flag(b, "the driver's and the SwitchAgent's events")
    b.set_defaults(run=_bmv2)


def _bmv2(args: argparse.Namespace) -> int:
    from switch.bmv2 import HostPort
    from switch.daemon import AgentOptions, Bmv2SwitchOptions, run_bmv2_switch

    _apply_verbose(args)
    tokens = _server_tokens(args)
    if tokens is None:
        raise ValueError(f"needs --token or --token-file (or ${TOKEN_ENV}): the SwitchAgent is authenticated")
    ports = {}
    for text in args.interface:
        port, sep, iface = text.partition("@")
        if not sep or not port.isdigit() or not iface:
            raise ValueError(f"--interface: expected PORT@IFACE, got {text!r}")
        ports[int(port)] = iface
    hosts = []
    for text in args.host:
        parts = text.split(",")
        if len(parts) != 3 or not parts[2].isdigit():
            raise ValueError(f"--host: expected IP,MAC,PORT, got {text!r}")
        hosts.append(HostPort(parts[0], parts[1], int(parts[2])))
    options = Bmv2SwitchOptions(
        json_path=args.json,
        interfaces=ports,
        switch_ip=args.switch_ip,
        switch_mac=args.switch_mac,
        hosts=tuple(hosts),
        log_file=args.log_file,
        log_level=args.log_level,
        agent=AgentOptions(args.agent, tokens, tls_cert=args.tls_cert, tls_key=args.tls_key),
        register=_registration(args),
        metrics=args.metrics,
    )
    run_bmv2_switch(options, lambda banner, fields: _ready(args, "bmv2", banner, **fields))
    return 0
