"""``netagg``: the command line: switch, controller, ctl, bmv2, experiment, allreduce, relay, demos."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from netagg.protocol import DEFAULT_CONTROLLER_PORT, DEFAULT_PORT, MAX_ELEMENTS, MAX_SLOTS, MAX_WORKERS

TOKEN_ENV = "NETAGG_TOKEN"  # = netagg.rpc.TOKEN_ENV (not imported: it pulls in grpc)

if TYPE_CHECKING:
    from netagg.rpc import Tokens

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

    c = sub.add_parser("controller", help="run the control plane (jobs, slot allocation, switch programming)")
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

    b = sub.add_parser(
        "bmv2", help="run simple_switch with netagg's P4 program and serve its SwitchAgent (the BMv2 driver)"
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
    _auth_flags(b, server=True)

    e = sub.add_parser(
        "experiment", help="build a topology in namespaces, run its switches and an allreduce sweep (root)"
    )
    e.add_argument("--topo", choices=("star", "leafspine", "tree"), default="leafspine")
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
    e.add_argument("--repeat", type=_int_range(1, 100), default=3)
    e.add_argument(
        "--elements", type=_int_range(1, 2000), default=2000, help="elements per packet (MTU 9000)"
    )
    e.add_argument("--out", type=Path, default=Path("out/experiment"))

    from netagg.ctl import add_ctl_parser

    add_ctl_parser(sub, _auth_flags)

    a = sub.add_parser("allreduce", help="run allreduces as one worker (for experiments and checks)")
    a.add_argument("--switch", required=True, type=_address, metavar="HOST:PORT")
    a.add_argument("--rank", type=_int_range(0, MAX_WORKERS - 1), required=True)
    a.add_argument("--world-size", type=_int_range(1, MAX_WORKERS), required=True)
    a.add_argument("--job", type=_int_range(0, 0xFFFF), default=1)
    a.add_argument(
        "--worker-id", type=_int_range(0, MAX_WORKERS - 1), help="id at the switch (default: the rank)"
    )
    a.add_argument("--size", type=_int_range(1, 1 << 30), default=1 << 20, help="elements per allreduce")
    a.add_argument("--dtype", choices=("float32", "int32"), default="float32")
    a.add_argument("--repeat", type=_int_range(1, 1_000_000), default=10)
    a.add_argument("--timeout", type=float, default=10.0, help="seconds without progress before failing")
    a.add_argument(
        "--seed",
        type=int,
        default=0,
        help="repetition i allreduces netagg.verify.inputs(rank, size, seed + i)",
    )
    a.add_argument(
        "--check",
        action="store_true",
        help="verify every result against numpy (every rank rebuilds every input); exit 1 if one is wrong",
    )
    a.add_argument("--bind", metavar="HOST:PORT", help="local address to send from (default: any)")
    a.add_argument(
        "--no-batch",
        action="store_true",
        help="no GSO/GRO runs of small packets (for switches that tap links with pcap, such as BMv2)",
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


def _listen_flag(p: argparse.ArgumentParser, port: int) -> None:
    p.add_argument(
        "--listen",
        type=_address,
        default=("127.0.0.1", port),
        metavar="HOST:PORT",
        help=f"address to serve on (default 127.0.0.1:{port})",
    )


def _auth_flags(p: argparse.ArgumentParser, *, server: bool) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--token", help=f"bearer token (default: ${TOKEN_ENV})")
    g.add_argument(
        "--token-file",
        type=Path,
        help="file of tokens, one `TOKEN TENANT [admin]` a line (a client uses the first)",
    )
    if server:
        p.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve TLS with this certificate")
        p.add_argument("--tls-key", type=Path, metavar="PEM", help="the certificate's private key")
    p.add_argument(
        "--tls-ca",
        type=Path,
        metavar="PEM",
        help="connect to the controller over TLS, trusting this CA certificate",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _build().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        if args.command == "switch":
            return _switch(args)
        if args.command == "controller":
            return _controller(args)
        if args.command == "bmv2":
            return _bmv2(args)
        if args.command == "experiment":
            return _experiment(args)
        if args.command == "ctl":
            from netagg.ctl import run_ctl

            return run_ctl(args)
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
    from switch.ethernet import EthernetSwitch
    from switch.udp import UdpSwitch

    if args.controller is not None and args.agent is None:
        args.agent = ("127.0.0.1", 0)
    if args.workers is None and args.agent is None:
        raise ValueError(
            "give --workers for a static job, or --agent/--controller to take jobs from the control plane"
        )
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    tokens = None
    if args.agent is not None:
        tokens = _server_tokens(args)
        if tokens is None:
            raise ValueError(
                f"--agent needs --token or --token-file (or ${TOKEN_ENV}): the SwitchAgent is authenticated"
            )
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
                total_workers=args.total_workers,
                parent=args.parent,
                parent_worker=args.parent_worker,
            )
        )
    server: UdpSwitch | EthernetSwitch
    if args.ethernet:
        if not args.ip:
            raise ValueError("--ethernet needs --ip (the aggregator's address)")
        server = EthernetSwitch(
            Dataplane(jobs), args.ethernet.split(","), args.ip, mac=args.mac, ingress_loss=args.ingress_loss
        )
    else:
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
    try:
        if args.agent is not None and tokens is not None:
            from switch.agent import serve_agent

            agent, agent_port = serve_agent(
                server.dataplane,
                server.lock,
                f"{args.agent[0]}:{args.agent[1]}",
                tokens,
                total_slots=args.total_slots,
                tls_cert=args.tls_cert,
                tls_key=args.tls_key,
            )
            what += f"; SwitchAgent on {args.agent[0]}:{agent_port}"
            if args.controller is not None:
                host = args.advertise or server.address[0]
                agent_host = args.advertise or args.agent[0]
                data = f"{host}:{server.address[1]}"
                switch_id = args.switch_id or data
                _register(args, switch_id, data, f"{agent_host}:{agent_port}")
                what += f"; registered as {switch_id} with {args.controller[0]}:{args.controller[1]}"
        _stop_on_signals(server.stop)
        print(f"netagg switch on {server.address[0]}:{server.address[1]}: {what}", flush=True)
        server.serve_forever()
    finally:
        if agent is not None:
            agent.stop(grace=1.0)
        if isinstance(server, UdpSwitch):
            server.sock.close()
    print(json.dumps(server.dataplane.stats()), flush=True)
    return 0


def _bmv2(args: argparse.Namespace) -> int:
    import threading

    from switch.agent import serve_switch_agent
    from switch.bmv2 import Bmv2Agent, Bmv2Process, HostPort

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
    sw = Bmv2Process(args.json, ports, log_file=args.log_file, log_level=args.log_level)
    server = None
    try:
        agent = Bmv2Agent(sw, args.switch_ip, args.switch_mac, hosts)
        server, port = serve_switch_agent(
            agent, f"{args.agent[0]}:{args.agent[1]}", tokens, tls_cert=args.tls_cert, tls_key=args.tls_key
        )
        what = f"SwitchAgent on {args.agent[0]}:{port}; simple_switch pid {sw.pid}, thrift {sw.thrift_port}"
        if args.controller is not None:
            switch_id = args.switch_id or f"bmv2-{args.switch_ip}"
            _register(
                args,
                switch_id,
                f"{args.switch_ip}:{DEFAULT_PORT}",
                f"{args.advertise or args.agent[0]}:{port}",
            )
            what += f"; registered as {switch_id}"
        stop = threading.Event()
        _stop_on_signals(stop.set)
        print(f"netagg bmv2 on {args.switch_ip}:{DEFAULT_PORT}: {what}", flush=True)
        while not stop.wait(0.5):
            if not sw.alive():
                raise OSError(f"simple_switch (pid {sw.pid}) exited")
    finally:
        if server is not None:
            server.stop(grace=1.0)
        sw.stop()
    return 0


def _experiment(args: argparse.Namespace) -> int:
    import os

    from netagg.experiment import run_experiment

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


def _server_tokens(args: argparse.Namespace) -> Tokens | None:
    import os

    from netagg.rpc import Tokens

    if args.token:
        return Tokens.single(args.token)
    if args.token_file:
        return Tokens.from_file(args.token_file)
    if os.environ.get(TOKEN_ENV):
        return Tokens.single(os.environ[TOKEN_ENV])
    return None


def _register(args: argparse.Namespace, switch_id: str, data: str, agent: str, wait: float = 30.0) -> None:
    """Register with the controller, retrying while it is not up yet (for ``wait`` seconds)."""
    import time

    import grpc

    from netagg.rpc import channel, read_token
    from netagg.v1 import control_pb2 as pb
    from netagg.v1 import control_pb2_grpc as pb_grpc

    token = read_token(args.token, args.token_file)
    host, port = args.controller
    deadline = time.monotonic() + wait
    with channel(f"{host}:{port}", token, tls_ca=args.tls_ca) as ch:
        stub = pb_grpc.ControllerStub(ch)
        while True:
            try:
                stub.RegisterSwitch(
                    pb.RegisterSwitchRequest(
                        switch_id=switch_id,
                        data_address=data,
                        agent_address=agent,
                        parent_switch_id=getattr(args, "parent_switch", None) or "",
                    ),
                    timeout=10,
                )
                return
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise ValueError(
                        f"registering with the controller: {exc.code().name}: {exc.details()}"
                    ) from None
                time.sleep(0.5)


def _controller(args: argparse.Namespace) -> int:
    import threading

    from netagg.controller import serve_controller
    from netagg.rpc import Tokens, generate_token_file
    from netagg.store import Store

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
    _stop_on_signals(stop.set)
    tls = " (TLS)" if args.tls_cert else ""
    print(f"netagg controller on {args.listen[0]}:{port}{tls}: db {args.db}{note}", flush=True)
    try:
        stop.wait()
    finally:
        server.stop(grace=2.0).wait()
        service.close()
        store.close()
    return 0


def _allreduce(args: argparse.Namespace) -> int:
    import time
    from typing import Any

    from host_agent.worker import Worker
    from netagg.verify import check, inputs

    host, port = args.switch
    times = []
    checks: list[dict[str, Any]] = []
    result: dict[str, object] = {"rank": args.rank, "size": args.size, "dtype": args.dtype}
    with Worker(
        f"{host}:{port}",
        args.rank,
        args.world_size,
        job=args.job,
        worker_id=args.worker_id,
        timeout=args.timeout,
        bind=args.bind,
        batch=not args.no_batch,
    ) as w:
        for i in range(args.repeat):  # repetition i: seed + i, so each reuse of a slot has new data
            x = inputs(args.rank, (args.size,), args.dtype, args.seed + i)
            t0 = time.perf_counter()
            y = w.allreduce(x)
            times.append(time.perf_counter() - t0)
            if args.check:
                checks.append(check(args.world_size, (args.size,), args.dtype, y, w.elements, args.seed + i))
        result["worker"] = w.stats.as_dict()
    if checks:  # every repetition checked; the worst of them, and which failed
        failed = [i for i, c in enumerate(checks) if not c["ok"]]
        result["check"] = {
            "ok": not failed,
            "repetitions": len(checks),
            "failed": failed,
            "max_err": max(c["max_err"] for c in checks),
            "max_err_over_bound": max(c.get("max_err_over_bound", float("nan")) for c in checks),
            **({"first_failure": checks[failed[0]]} if failed else {}),
        }
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
