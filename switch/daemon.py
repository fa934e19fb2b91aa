"""A switch, assembled: backend + packet loop + SwitchAgent + registration with the controller.

``netagg switch`` and ``netagg bmv2`` parse their flags into the frozen options below and call
:func:`run_python_switch` / :func:`run_bmv2_switch`; anything else that needs a running switch (Mininet
nodes, the conformance harness, your tests) builds the same options and uses :class:`PythonSwitch` /
:class:`Bmv2Switch`, so there is one way a switch is put together.

Example::

    options = PythonSwitchOptions(jobs=(JobConfig(job_id=1, workers=2, slots=64, elements=64),))
    with PythonSwitch(options) as sw:
        sw.start()  # the packet loop in a thread; sw.address is where workers send
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from netagg.protocol import DEFAULT_PORT, MAX_SLOTS
from netagg.service import stop_on_signals
from netagg.udpbatch import BATCH_BELOW_ELEMENTS
from switch.backend import PythonBackend, SwitchBackend
from switch.core import Dataplane, JobConfig
from switch.ethernet import EthernetSwitch
from switch.udp import UdpSwitch

if TYPE_CHECKING:  # grpc is imported only by a switch that serves an agent: a static one starts faster
    import grpc

    from netagg.rpc import Tokens
    from switch.metrics import MetricsServer, Snapshot

#: Called once the switch serves: the banner for people, and the ready line's fields for programs.
Announce = Callable[[str, dict[str, object]], None]

__all__ = [
    "AgentOptions",
    "Bmv2Switch",
    "Bmv2SwitchOptions",
    "PythonSwitch",
    "PythonSwitchOptions",
    "Registration",
    "register_switch",
    "run_bmv2_switch",
    "run_python_switch",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgentOptions:
    """Where and how the switch serves its SwitchAgent."""

    address: tuple[str, int]
    """(host, port) to listen on; port 0 picks a free one."""
    tokens: Tokens
    """The bearer tokens it accepts (the SwitchAgent is always authenticated)."""
    tls_cert: Path | None = None
    """PEM certificate to serve TLS with (with ``tls_key``); plain gRPC without."""
    tls_key: Path | None = None
    """Its private key."""

    def serve(self, backend: SwitchBackend) -> tuple[grpc.Server, int]:
        """Serve ``backend``'s SwitchAgent at :attr:`address`; (server, bound port)."""
        from switch.agent import serve_backend

        host, port = self.address
        return serve_backend(
            backend, f"{host}:{port}", self.tokens, tls_cert=self.tls_cert, tls_key=self.tls_key
        )


@dataclass(frozen=True)
class Registration:
    """Registering the switch with the controller (``RegisterSwitch``), retried while it is not up."""

    controller: tuple[str, int]
    """The controller's (host, port)."""
    token: str | None = None
    """An admin token for the controller."""
    tls_ca: Path | None = None
    """CA certificate of the controller's TLS (plain gRPC without)."""
    switch_id: str | None = None
    """The id to register under (default: the data address, or ``bmv2-<ip>``)."""
    advertise: str | None = None
    """The host the controller and workers should use for this switch (default: the listen host)."""
    parent_switch: str | None = None
    """The id of this switch's parent in an aggregation tree."""
    wait: float = 30.0
    """Seconds to keep retrying while the controller is UNAVAILABLE."""


def register_switch(reg: Registration, switch_id: str, data: str, agent: str) -> None:
    """Register with the controller, retrying while it is not up yet (for ``reg.wait`` seconds).
    ValueError with the controller's answer if it refuses."""
    import grpc

    from netagg.rpc import channel
    from netagg.v1 import control_pb2 as pb
    from netagg.v1 import control_pb2_grpc as pb_grpc

    host, port = reg.controller
    deadline = time.monotonic() + reg.wait
    with channel(f"{host}:{port}", reg.token, tls_ca=reg.tls_ca) as ch:
        stub = pb_grpc.ControllerStub(ch)
        while True:
            try:
                stub.RegisterSwitch(
                    pb.RegisterSwitchRequest(
                        switch_id=switch_id,
                        data_address=data,
                        agent_address=agent,
                        parent_switch_id=reg.parent_switch or "",
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


# -- the Python switch ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class PythonSwitchOptions:
    """Everything ``netagg switch`` is told."""

    jobs: tuple[JobConfig, ...] = ()
    """Static jobs (none: jobs come through the SwitchAgent)."""
    listen: tuple[str, int] = ("127.0.0.1", DEFAULT_PORT)
    """The UDP (host, port) to serve on (port 0: a free one)."""
    ethernet: tuple[str, ...] = ()
    """Serve raw Ethernet on these interfaces instead of a UDP socket (Mininet nodes)."""
    ip: str | None = None
    """The aggregator's IPv4 address on ``ethernet``."""
    mac: str | None = None
    """... and its MAC (default: the first interface's)."""
    ingress_loss: float = 0.0
    """With ``ethernet``: drop this fraction of received frames (tests)."""
    stats_file: Path | None = None
    """Write the counters here as JSON (UDP only)."""
    stats_interval: float = 0.0
    """... every this many seconds (0: at exit)."""
    total_slots: int = MAX_SLOTS
    """Slots the SwitchAgent offers."""
    agent: AgentOptions | None = None
    """Serve a SwitchAgent (needed for ``register``)."""
    register: Registration | None = None
    """Register with a controller once the agent is up."""
    join_refresh: float = 2.0
    """Seconds a member counts towards a JOIN round after its last JOIN (docs/protocol.md, Joining)."""
    metrics: tuple[str, int] | None = None
    """Serve Prometheus metrics at http://HOST:PORT/metrics (port 0: a free one); none without."""
    pcap: Path | None = None
    """Write every datagram received and sent to this pcap file (UDP only)."""

    def __post_init__(self) -> None:
        if self.join_refresh <= 0:
            raise ValueError(f"join_refresh must be positive, got {self.join_refresh}")
        if self.pcap is not None and self.ethernet:
            raise ValueError(
                "--pcap captures the UDP switch; with --ethernet capture the interfaces (tcpdump)"
            )
        if not self.jobs and self.agent is None:
            raise ValueError(
                "give --workers for a static job, or --agent/--controller to take jobs from the control plane"
            )
        if self.register is not None and self.agent is None:
            raise ValueError("registering with a controller needs a SwitchAgent")
        if (self.agent is not None) and ((self.agent.tls_cert is None) != (self.agent.tls_key is None)):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.ethernet and not self.ip:
            raise ValueError("--ethernet needs --ip (the aggregator's address)")


class PythonSwitch:
    """The Python switch of ``options``: its packet loop bound (UDP or Ethernet), its SwitchAgent
    serving and registered when asked. :meth:`serve_forever` (or :meth:`start` for a thread) runs the
    loop; :meth:`close` stops everything."""

    def __init__(self, options: PythonSwitchOptions) -> None:
        self.options = o = options
        self.server: UdpSwitch | EthernetSwitch
        dataplane = Dataplane(o.jobs, join_refresh=o.join_refresh)
        if o.ethernet:
            assert o.ip is not None
            self.server = EthernetSwitch(
                dataplane, list(o.ethernet), o.ip, mac=o.mac, ingress_loss=o.ingress_loss
            )
        else:
            self.server = UdpSwitch(
                dataplane,
                *o.listen,
                stats_file=o.stats_file,
                stats_interval=o.stats_interval,
                # Without a static job, jobs of any size may come: batched receives then, which cost
                # large packets little (GRO only coalesces same-size runs).
                gro=not o.jobs or o.jobs[0].elements < BATCH_BELOW_ELEMENTS,
            )
        self.backend = PythonBackend(self.server.dataplane, self.server.lock, total_slots=o.total_slots)
        self.agent: grpc.Server | None = None
        self.agent_port: int | None = None
        self.metrics: MetricsServer | None = None
        self.ready: dict[str, object] = {
            "data": f"{self.address[0]}:{self.address[1]}",
            "agent": None,
            "metrics": None,
        }
        """What the CLI's ready line says beyond the role: where to send, the agent, the metrics, the id."""
        if o.jobs:
            cfg = o.jobs[0]
            what = (
                f"job {cfg.job_id}, {cfg.workers} workers, {cfg.slots} slots, {cfg.elements} elements/packet"
            )
        else:
            what = "no static job"
        try:
            if o.pcap is not None and isinstance(self.server, UdpSwitch):
                from switch.pcap import Capture

                self.server.capture = Capture(o.pcap, self.address)
                what += f"; capturing to {o.pcap}"
            if o.metrics is not None:
                from switch.metrics import SwitchCollector, serve_metrics

                self.metrics = serve_metrics(SwitchCollector(self.snapshot, kind="python"), o.metrics)
                self.ready["metrics"] = "{}:{}".format(*self.metrics.address)
                what += f"; metrics on {self.metrics.url}"
            if o.agent is not None:
                self.agent, self.agent_port = o.agent.serve(self.backend)
                self.ready["agent"] = f"{o.agent.address[0]}:{self.agent_port}"
                what += f"; SwitchAgent on {self.ready['agent']}"
                if o.register is not None:
                    reg = o.register
                    data = f"{reg.advertise or self.address[0]}:{self.address[1]}"
                    switch_id = reg.switch_id or data
                    register_switch(
                        reg, switch_id, data, f"{reg.advertise or o.agent.address[0]}:{self.agent_port}"
                    )
                    what += f"; registered as {switch_id} with {reg.controller[0]}:{reg.controller[1]}"
                    self.ready["switch_id"] = switch_id
        except BaseException:
            self.close()
            raise
        self.description = what
        """What it serves, in one line (the CLI's banner says it)."""

    @property
    def address(self) -> tuple[str, int]:
        """Where workers send: the UDP socket's address, or (--ip, 47000) on Ethernet."""
        return self.server.address

    @property
    def dataplane(self) -> Dataplane:
        return self.server.dataplane

    def snapshot(self) -> Snapshot:
        """The counters, switch-wide and per job, copied at one moment (any thread may call it)."""
        from switch.metrics import Snapshot

        dp = self.dataplane
        # The packet loop changes the counters only while it holds this lock (once per datagram, or
        # per GRO run), as the SwitchAgent's changes do: copied under it they are one consistent
        # moment, and the loop waits at most for one copy of a few dicts.
        with self.server.lock:
            stats = dp.stats()
            jobs = {  # job_stats() builds new dicts; their drops are copies too (dict(job.drops))
                job_id: {k: dict(v) if isinstance(v, dict) else v for k, v in values.items()}
                for job_id, values in dp.job_stats().items()
            }
            workers = {cfg.job_id: cfg.workers for cfg in dp.jobs}
        return Snapshot(stats, jobs, workers)

    def serve_forever(self) -> None:
        self.server.serve_forever()

    def start(self) -> PythonSwitch:
        self.server.start()
        return self

    def stop(self) -> None:
        """Make :meth:`serve_forever` return (safe from a signal handler)."""
        self.server.stop()

    def close(self) -> None:
        """Stop the agent and the metrics server, release the socket and close the capture."""
        _stop_servers(self)
        if isinstance(self.server, UdpSwitch):
            self.server.sock.close()
            if self.server.capture is not None:
                self.server.capture.close()

    def __enter__(self) -> PythonSwitch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.close()


def _stop_servers(switch: PythonSwitch | Bmv2Switch) -> None:
    """Stop a switch's agent and metrics servers, if it runs them (both switch kinds' close())."""
    if switch.agent is not None:
        switch.agent.stop(grace=1.0)
        switch.agent = None
    if switch.metrics is not None:
        switch.metrics.close()
        switch.metrics = None


def run_python_switch(options: PythonSwitchOptions, announce: Announce) -> dict[str, Any]:
    """``netagg switch``: assemble, ``announce`` the banner and the ready line's fields, serve until
    SIGINT/SIGTERM, close; returns the counters (:meth:`Dataplane.stats`)."""
    sw = PythonSwitch(options)
    try:
        stop_on_signals(sw.stop)
        announce(f"netagg switch on {sw.address[0]}:{sw.address[1]}: {sw.description}", sw.ready)
        sw.serve_forever()
    finally:
        sw.close()
    return sw.dataplane.stats()


# -- BMv2 ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bmv2SwitchOptions:
    """Everything ``netagg bmv2`` is told."""

    json_path: Path
    """The compiled program (``make p4``: build/p4/netagg.json)."""
    interfaces: Mapping[int, str]
    """BMv2 port number -> Linux interface."""
    switch_ip: str
    """The aggregator's IPv4 address (workers send to it, port 47000; the program answers ARP)."""
    switch_mac: str
    """... and its MAC."""
    hosts: Sequence[Any] = ()
    """:class:`switch.bmv2.HostPort` of every host (or switch) behind a port."""
    log_file: Path | None = None
    """simple_switch's log (default: none)."""
    log_level: str | None = None
    """simple_switch's --log-level (default: off without a log file, trace with one)."""
    device_id: int = 0
    """simple_switch's --device-id (distinct per simple_switch on one machine)."""
    agent: AgentOptions | None = None
    """Serve a SwitchAgent."""
    register: Registration | None = None
    """Register with a controller once the agent is up."""
    jobs: tuple[JobConfig, ...] = field(default=())
    """Jobs to install at start (Mininet nodes' static job)."""
    metrics: tuple[str, int] | None = None
    """Serve Prometheus metrics at http://HOST:PORT/metrics: BMv2's counters are switch-wide, so only
    the netagg_switch_* series (bytes are whole frames there)."""

    def __post_init__(self) -> None:
        if self.register is not None and self.agent is None:
            raise ValueError("registering with a controller needs a SwitchAgent")


class Bmv2Switch:
    """``simple_switch`` with netagg's program (:attr:`process`), its table driver (:attr:`backend`),
    and the SwitchAgent and registration when asked; :meth:`close` stops everything."""

    def __init__(self, options: Bmv2SwitchOptions) -> None:
        from switch.bmv2 import Bmv2Backend, Bmv2Process

        self.options = o = options
        self.process = Bmv2Process(
            o.json_path, o.interfaces, log_file=o.log_file, log_level=o.log_level, device_id=o.device_id
        )
        self.agent: grpc.Server | None = None
        self.agent_port: int | None = None
        self.metrics: MetricsServer | None = None
        self.ready: dict[str, object] = {
            "data": f"{o.switch_ip}:{DEFAULT_PORT}",
            "agent": None,
            "metrics": None,
        }
        """What the CLI's ready line says beyond the role."""
        try:
            self.backend = Bmv2Backend(self.process, o.switch_ip, o.switch_mac, o.hosts)
            for cfg in o.jobs:
                self.backend.install(cfg)
            what = f"simple_switch pid {self.process.pid}, thrift {self.process.thrift_port}"
            if o.metrics is not None:
                from switch.metrics import Snapshot, SwitchCollector, serve_metrics

                # The driver reads BMv2's counter arrays under its own lock (switch.bmv2.Bmv2Backend).
                backend = self.backend
                collector = SwitchCollector(lambda: Snapshot(backend.counters()), kind="bmv2")
                self.metrics = serve_metrics(collector, o.metrics)
                self.ready["metrics"] = "{}:{}".format(*self.metrics.address)
                what += f"; metrics on {self.metrics.url}"
            if o.agent is not None:
                self.agent, self.agent_port = o.agent.serve(self.backend)
                what = f"SwitchAgent on {o.agent.address[0]}:{self.agent_port}; {what}"
                self.ready["agent"] = f"{o.agent.address[0]}:{self.agent_port}"
                if o.register is not None:
                    reg = o.register
                    switch_id = reg.switch_id or f"bmv2-{o.switch_ip}"
                    register_switch(
                        reg,
                        switch_id,
                        f"{o.switch_ip}:{DEFAULT_PORT}",
                        f"{reg.advertise or o.agent.address[0]}:{self.agent_port}",
                    )
                    what += f"; registered as {switch_id}"
                    self.ready["switch_id"] = switch_id
            self.ready["simple_switch_pid"] = self.process.pid
        except BaseException:
            self.close()
            raise
        self.description = what
        self._stop = threading.Event()

    def serve_forever(self) -> None:
        """Wait until :meth:`stop`; OSError if simple_switch exits meanwhile."""
        while not self._stop.wait(0.5):
            if not self.process.alive():
                raise OSError(f"simple_switch (pid {self.process.pid}) exited")

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        _stop_servers(self)
        self.process.stop()

    def __enter__(self) -> Bmv2Switch:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def run_bmv2_switch(options: Bmv2SwitchOptions, announce: Announce) -> None:
    """``netagg bmv2``: start, ``announce`` the banner and the ready line's fields, serve until
    SIGINT/SIGTERM, stop."""
    sw = Bmv2Switch(options)
    try:
        stop_on_signals(sw.stop)
        announce(f"netagg bmv2 on {options.switch_ip}:{DEFAULT_PORT}: {sw.description}", sw.ready)
        sw.serve_forever()
    finally:
        sw.close()
