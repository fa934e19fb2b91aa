"""``netagg controller``: the control plane (jobs, slot allocation, switch programming) over gRPC."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from netagg.cli._common import (
    _address,
    _auth_flags,
    _int_range,
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
  netagg controller --db jobs.db --metrics 127.0.0.1:9100 --health-interval 1 --idle-after 60

Once serving it prints one JSON line on stdout (or into --ready-file):
  {"event": "ready", "role": "controller", "address": "127.0.0.1:47100", "tls": false, "pid": 1234}
(with "metrics": "HOST:PORT" when it serves --metrics)."""


def _seconds(text: str) -> float:
    """A number of seconds > 0, for argparse."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < 1e6:
        raise argparse.ArgumentTypeError(f"{value:g} is not a number of seconds > 0")
    return value


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
    c.add_argument(
        "--health-interval",
        type=_seconds,
        default=2.0,
        metavar="SECONDS",
        help="seconds between health checks of each switch (its SwitchAgent's GetInfo; default 2)",
    )
    c.add_argument(
        "--health-failures",
        type=_int_range(1, 1000),
        default=3,
        metavar="N",
        help="failed checks in a row after which a switch is down: no new jobs there (default 3)",
    )
    c.add_argument(
        "--idle-after",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="a job whose workers are joined but whose switches count none of its packets for this "
        "long is idle (default 30)",
    )
    c.add_argument(
        "--metrics",
        type=_address,
        metavar="HOST:PORT",
        help="serve Prometheus metrics (per switch and per job) over HTTP at /metrics on this address",
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
        health_interval=args.health_interval,
        health_failures=args.health_failures,
        idle_after=args.idle_after,
    )
    fields: dict[str, object] = {}
    metrics = None
    try:
        if args.metrics is not None:
            from controller.metrics import serve_metrics

            mhost = args.metrics[0]
            metrics, mport = serve_metrics(mhost, args.metrics[1], service)
            fields["metrics"] = f"[{mhost}]:{mport}" if ":" in mhost else f"{mhost}:{mport}"
    except BaseException:
        server.stop(grace=None)
        service.close()
        store.close()
        raise
    stop = threading.Event()
    stop_on_signals(stop.set)
    tls = " (TLS)" if args.tls_cert else ""
    address = f"{args.listen[0]}:{port}"
    more = f"; metrics on http://{fields['metrics']}/metrics" if metrics is not None else ""
    banner = f"netagg controller on {address}{tls}: db {args.db}{note}{more}"
    _ready(args, "controller", banner, address=address, tls=bool(tls), db=str(args.db), **fields)
    try:
        stop.wait()
    finally:
        if metrics is not None:
            metrics.shutdown()
            metrics.server_close()
        server.stop(grace=2.0).wait()
        service.close()
        store.close()
    return 0
