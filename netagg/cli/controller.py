"""``netagg controller``: the control plane (jobs, slot allocation, switch programming) over gRPC."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from netagg.cli._common import (
    _auth_flags,
    _listen_flag,
    _ready,
    _ready_flag,
    _server_tokens,
)
from netagg.protocol import DEFAULT_CONTROLLER_PORT
from netagg.service import stop_on_signals

__all__ = ["add_parser"]

EXAMPLES = """\
examples:
  netagg controller --db jobs.db                     # admin token written to jobs.db.token
  netagg controller --listen 0.0.0.0:47100 --db jobs.db --token-file tokens \\
                    --tls-cert cert.pem --tls-key key.pem

Once serving it prints one JSON line on stdout (or into --ready-file):
  {"event": "ready", "role": "controller", "address": "127.0.0.1:47100", "tls": false, "pid": 1234}"""


def add_parser(sub: Any) -> None:
    """Add ``netagg controller`` to the subcommands ``sub``."""
    c = sub.add_parser(
        "controller",
        help="run the control plane (jobs, slot allocation, switch programming)",
        epilog=EXAMPLES,
    )
    _listen_flag(c, DEFAULT_CONTROLLER_PORT)
    c.add_argument(
        "--db",
        type=Path,
        default=Path("netagg-controller.db"),
        help="SQLite file with the jobs and switches (default ./netagg-controller.db; kept across restarts)",
    )
    c.add_argument(
        "--agent-tls-ca",
        type=Path,
        metavar="PEM",
        help="CA certificate the switch agents' TLS certificates are signed with (default: plain gRPC)",
    )
    _auth_flags(c, server=True)
    _ready_flag(c)
    c.set_defaults(run=_controller)


def _controller(args: argparse.Namespace) -> int:
    import threading

    from controller import Store, serve_controller
    from netagg.rpc import Tokens, generate_token_file

    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    tokens = _server_tokens(args)
    note = ""
    if tokens is None:
        token_file = args.db.with_name(args.db.name + ".token")
        if not token_file.exists():
            generate_token_file(token_file)
        tokens = Tokens.from_file(token_file)
        note = f"; admin token in {token_file}"
    store = Store(args.db)
    server, port, service = serve_controller(
        f"{args.listen[0]}:{args.listen[1]}",
        store,
        tokens,
        tls_cert=str(args.tls_cert) if args.tls_cert else None,
        tls_key=str(args.tls_key) if args.tls_key else None,
        agent_tls_ca=str(args.agent_tls_ca) if args.agent_tls_ca else None,
    )
    stop = threading.Event()
    stop_on_signals(stop.set)
    tls = " (TLS)" if args.tls_cert else ""
    address = f"{args.listen[0]}:{port}"
    banner = f"netagg controller on {address}{tls}: db {args.db}{note}"
    _ready(args, "controller", banner, address=address, tls=bool(tls), db=str(args.db))
    try:
        stop.wait()
    finally:
        server.stop(grace=2.0).wait()
        service.close()
        store.close()
    return 0
