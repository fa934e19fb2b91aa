"""The controller tells the truth (issue 15): job keys, switches that go down and come back, idle jobs,
LeaveJob, deleting a running job, the metrics endpoint, and an unreachable controller. The controller
runs in process on port 0 with fast health checks and programs real Python SwitchAgents (in process,
over gRPC, each over a real Dataplane)."""

from __future__ import annotations

import logging
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller import Store, serve_controller
from controller.metrics import serve_metrics
from controller.service import ControllerService
from host_agent.errors import NetAggError, RefusedError
from host_agent.join import JoinHandshake, join_controller, leave_controller
from netagg.cli import main as netagg_main
from netagg.cli.launch import ControllerProcess, free_port
from netagg.protocol import HEADER, VERSION, MsgType, format_key
from netagg.rpc import Tenant, Tokens, channel
from netagg.v1 import control_pb2 as pb
from netagg.v1 import control_pb2_grpc as pb_grpc
from switch.agent import serve_agent
from switch.core import Dataplane

ADMIN = "admin-token-0123456789abcdef"
ALICE = "alice-token-0123456789abcdef"
TOKENS = [(ADMIN, Tenant("ops", admin=True)), (ALICE, Tenant("alice"))]
INTERVAL = 0.05  # health checks: fast, so that a switch is down within ~0.15 s


def until(what: Callable[[], object], timeout: float = 10.0) -> object:
    """Wait for ``what()`` to be true (polling); fail naming the last value otherwise."""
    deadline = time.monotonic() + timeout
    value = what()
    while not value and time.monotonic() < deadline:
        time.sleep(0.02)
        value = what()
    assert value, f"not true within {timeout} s"
    return value


def spec(**kw) -> pb.JobSpec:
    base = dict(name="job", workers=2, element_type=pb.ELEMENT_TYPE_INT32, elements_per_packet=64, slots=8)
    return pb.JobSpec(**{**base, **kw})


def code_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


@dataclass
class Agent:
    """A Python switch's SwitchAgent in process: the real Dataplane it programs, its gRPC server."""

    dataplane: Dataplane
    server: grpc.Server
    port: int
    lock: threading.Lock

    @classmethod
    def start(cls, port: int = 0) -> Agent:
        dataplane, lock = Dataplane(), threading.Lock()
        server, bound = serve_agent(
            dataplane, lock, f"127.0.0.1:{port}", Tokens.single(ADMIN), total_slots=64
        )
        return cls(dataplane, server, bound, lock)

    def handle(self, datagram: bytes, src: tuple[str, int]) -> None:
        """A datagram into the dataplane, under the lock a switch's packet loop holds."""
        with self.lock:
            self.dataplane.handle(datagram, src)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class Plane:
    service: ControllerService
    address: str
    admin: pb_grpc.ControllerStub
    alice: pb_grpc.ControllerStub
    agents: dict[str, Agent]
    db: Path
    _closers: list[Callable[[], object]] = field(default_factory=list)

    def register(self, switch_id: str, agent: Agent) -> pb.Switch:
        self.agents[switch_id] = agent
        return self.admin.RegisterSwitch(
            pb.RegisterSwitchRequest(
                switch_id=switch_id,
                data_address=f"127.0.0.1:{47000 + len(self.agents)}",
                agent_address=agent.address,
            )
        )

    def switch(self, switch_id: str) -> pb.Switch:
        return next(
            s for s in self.admin.ListSwitches(pb.ListSwitchesRequest()).switches if s.switch_id == switch_id
        )

    def job(self, job_id: str) -> pb.Job:
        return self.alice.GetJob(pb.GetJobRequest(job_id=job_id))

    def join(self, job: pb.Job, rank: int, port: int | None = None) -> pb.JoinJobResponse:
        address = f"127.0.0.1:{port or 6000 + rank}"
        return self.alice.JoinJob(pb.JoinJobRequest(job_id=job.job_id, rank=rank, address=address))


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Plane]:
    db = tmp_path / "ctl.db"
    server, port, service = serve_controller(
        "127.0.0.1:0", Store(db), Tokens(TOKENS), health_interval=INTERVAL, health_failures=3, idle_after=0.5
    )
    address = f"127.0.0.1:{port}"
    chans = [channel(address, ADMIN), channel(address, ALICE)]
    p = Plane(service, address, pb_grpc.ControllerStub(chans[0]), pb_grpc.ControllerStub(chans[1]), {}, db)
    p.register("sw1", Agent.start())
    try:
        yield p
    finally:
        for ch in chans:
            ch.close()
        server.stop(grace=None)
        service.close()
        for agent in p.agents.values():
            agent.server.stop(grace=None)


def test_a_job_key_goes_to_its_switch_and_workers_and_nowhere_else(plane: Plane) -> None:
    a = plane.alice.CreateJob(pb.CreateJobRequest(spec=spec(name="a")))
    b = plane.alice.CreateJob(pb.CreateJobRequest(spec=spec(name="b")))
    installed = {c.job_id: c for c in plane.agents["sw1"].dataplane.jobs}
    key_a, key_b = installed[a.wire_job_id].key, installed[b.wire_job_id].key
    assert key_a != 0 and key_b != 0 and key_a != key_b  # one random key per job
    assert installed[a.wire_job_id].parent_key == 0  # no parent
    joined = [plane.join(a, r) for r in range(2)]
    assert [j.key for j in joined] == [key_a, key_a]
    assert joined[0].worker_address == "127.0.0.1:6000"
    # never shown: not by GetJob, ListJobs or StreamStats, in bytes or as text
    shown = [
        plane.alice.GetJob(pb.GetJobRequest(job_id=a.job_id)).SerializeToString(),
        plane.admin.ListJobs(pb.ListJobsRequest()).SerializeToString(),
        next(iter(plane.alice.StreamStats(pb.StreamStatsRequest(interval_seconds=0.1)))).SerializeToString(),
    ]
    for key in (key_a, key_b):
        for blob in shown:
            assert key.to_bytes(8, "little") not in blob and format_key(key).encode() not in blob
            assert pb.JoinJobResponse(key=key).SerializeToString()[1:] not in blob  # the varint form
    assert "key" not in pb.Job.DESCRIPTOR.fields_by_name


def test_workers_with_the_key_from_join_job_complete_a_round_and_a_wrong_key_is_refused(plane: Plane) -> None:
    """What a Worker does with JoinJobResponse.key, against the dataplane the controller programmed."""
    job = plane.alice.CreateJob(pb.CreateJobRequest(spec=spec()))
    joined = [plane.join(job, r) for r in range(2)]
    agent = plane.agents["sw1"]
    stranger = JoinHandshake(job.wire_job_id, 0, key=joined[0].key ^ 1)
    with agent.lock:
        [(answer, _)] = agent.dataplane.handle(stranger.packet, ("127.0.0.1", 6000))
    with pytest.raises(RefusedError, match="bad_key"):
        stranger.on_datagram(answer, len(answer))
    shakes = [JoinHandshake(j.wire_job_id, j.worker_id, key=j.key) for j in joined]
    params = {}
    for _ in range(2):  # the first JOINs get PENDING or JOIN_ACK, their repeats JOIN_ACK
        for r, shake in enumerate(shakes):
            with agent.lock:
                outs = agent.dataplane.handle(shake.packet, ("127.0.0.1", 6000 + r))
            for datagram, dests in outs:
                for dest in dests:
                    got = shakes[dest[1] - 6000].on_datagram(datagram, len(datagram))
                    if got is not None:
                        params[got.worker_id] = got
    assert sorted(params) == [0, 1] and {p.epoch for p in params.values()} == {1}
    assert agent.dataplane.job_stats()[job.wire_job_id]["drops"]["bad_key"] == 1  # type: ignore[index]


def test_the_key_survives_a_controller_restart_and_a_switch_restart(plane: Plane) -> None:
    job = plane.alice.CreateJob(pb.CreateJobRequest(spec=spec()))
    [cfg] = plane.agents["sw1"].dataplane.jobs
    for r in range(2):
        plane.join(job, r)
    server, port, service = serve_controller(
        "127.0.0.1:0", Store(plane.db), Tokens(TOKENS), health_interval=INTERVAL
    )
    try:
        plane.agents["sw1"].dataplane.remove(job.wire_job_id)  # as if the switch had lost it
        with channel(f"127.0.0.1:{port}", ADMIN) as ch:
            stub = pb_grpc.ControllerStub(ch)
            # the switch registers again with the new controller: it gets the job back, same key
            stub.RegisterSwitch(
                pb.RegisterSwitchRequest(
                    switch_id="sw1", data_address="127.0.0.1:47001", agent_address=plane.agents["sw1"].address
                )
            )
            [again] = plane.agents["sw1"].dataplane.jobs
            assert (again.key, again.slot_base, again.slots) == (cfg.key, cfg.slot_base, cfg.slots)
            assert again.addresses == (("127.0.0.1", 6000), ("127.0.0.1", 6001))  # pinned as before
            rejoined = stub.JoinJob(pb.JoinJobRequest(job_id=job.job_id, rank=0, address="127.0.0.1:6000"))
            assert rejoined.key == cfg.key
    finally:
        server.stop(grace=None)
        service.close()


def test_a_switch_that_stops_answering_is_down_and_gets_its_jobs_back(plane: Plane) -> None:
    job = plane.alice.CreateJob(pb.CreateJobRequest(spec=spec(slots=8)))
    for r in range(2):
        plane.join(job, r)
    [cfg] = plane.agents["sw1"].dataplane.jobs
    assert plane.switch("sw1").state == pb.SWITCH_STATE_UP and plane.switch("sw1").jobs == 1
    port = plane.agents["sw1"].port
    plane.agents["sw1"].server.stop(grace=None).wait()  # the switch dies
    until(lambda: plane.switch("sw1").state == pb.SWITCH_STATE_DOWN)
    sw = plane.switch("sw1")
    assert sw.health_failures >= 3 and sw.last_error.startswith("UNAVAILABLE")
    got = plane.job(job.job_id)
    assert got.state == pb.JOB_STATE_SWITCH_DOWN and "switch sw1 is down: UNAVAILABLE" in got.state_detail
    code, message = code_of(lambda: plane.alice.CreateJob(pb.CreateJobRequest(spec=spec(name="new"))))
    assert code == grpc.StatusCode.UNAVAILABLE and "sw1 is down" in message
    # it comes back on the same address (a restart, without registering): its job is there again
    plane.agents["sw1"] = Agent.start(port)
    until(lambda: plane.switch("sw1").state == pb.SWITCH_STATE_UP)
    [back] = plane.agents["sw1"].dataplane.jobs
    assert (back.job_id, back.slot_base, back.slots, back.key) == (
        cfg.job_id,
        cfg.slot_base,
        cfg.slots,
        cfg.key,
    )
    assert back.addresses == (("127.0.0.1", 6000), ("127.0.0.1", 6001))  # the workers were pinned: again
    assert plane.job(job.job_id).state == pb.JOB_STATE_RUNNING
    assert plane.switch("sw1").health_failures == 0
    plane.alice.CreateJob(pb.CreateJobRequest(spec=spec(name="new")))  # it takes jobs again


def test_a_switch_that_registers_again_from_elsewhere_is_up_with_its_jobs(plane: Plane) -> None:
    job = plane.alice.CreateJob(pb.CreateJobRequest(spec=spec()))
    [cfg] = plane.agents["sw1"].dataplane.jobs
    plane.agents["sw1"].server.stop(grace=None).wait()
    until(lambda: plane.switch("sw1").state == pb.SWITCH_STATE_DOWN)
    plane.register("sw1", Agent.start())  # restarted on another agent port, and registers
    sw = plane.switch("sw1")
    assert sw.state == pb.SWITCH_STATE_UP and sw.last_error == "" and sw.health_failures == 0
    [back] = plane.agents["sw1"].dataplane.jobs
    assert (back.job_id, back.key) == (cfg.job_id, cfg.key)
    assert plane.job(job.job_id).state == pb.JOB_STATE_PENDING


def test_leaving_makes_a_job_idle_and_a_running_job_needs_force_to_delete(plane: Plane) -> None:
    job = plane.alice.CreateJob(pb.CreateJobRequest(spec=spec()))
    for r in range(2):
        plane.join(job, r)
    assert plane.job(job.job_id).state == pb.JOB_STATE_RUNNING
    code, message = code_of(lambda: plane.alice.DeleteJob(pb.DeleteJobRequest(job_id=job.job_id)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "is running" in message and "force" in message
    assert len(plane.agents["sw1"].dataplane.jobs) == 1  # still there
    # a leave from an address the rank did not join from changes nothing
    other = pb.LeaveJobRequest(job_id=job.job_id, rank=0, address="127.0.0.1:9999")
    assert plane.alice.LeaveJob(other).left is False
    assert plane.job(job.job_id).state == pb.JOB_STATE_RUNNING
    code, _ = code_of(
        lambda: plane.alice.LeaveJob(pb.LeaveJobRequest(job_id=job.job_id, rank=5, address="127.0.0.1:1"))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert leave_controller(plane.address, job.job_id, 0, "127.0.0.1:6000", ALICE, None) is True
    got = plane.job(job.job_id)
    assert got.state == pb.JOB_STATE_PENDING and list(got.joined_ranks) == [1]
    assert leave_controller(plane.address, job.job_id, 1, "127.0.0.1:6001", ALICE, None) is True
    got = plane.job(job.job_id)
    assert got.state == pb.JOB_STATE_IDLE and list(got.joined_ranks) == []
    assert "left" in got.state_detail
    # a rank that left is free: another worker takes it without replace
    plane.join(job, 0, port=7000)
    assert list(plane.job(job.job_id).joined_ranks) == [0]
    plane.alice.DeleteJob(pb.DeleteJobRequest(job_id=job.job_id))  # not running: no force needed
    assert plane.agents["sw1"].dataplane.jobs == []


def test_force_deletes_a_running_job(plane: Plane) -> None:
    job = plane.alice.CreateJob(pb.CreateJobRequest(spec=spec()))
    for r in range(2):
        plane.join(job, r)
    plane.alice.DeleteJob(pb.DeleteJobRequest(job_id=job.job_id, force=True))
    assert plane.agents["sw1"].dataplane.jobs == []
    assert plane.alice.ListJobs(pb.ListJobsRequest()).jobs == []


def test_leave_is_best_effort() -> None:
    # nobody listens there: False at once, no exception
    start = time.monotonic()
    assert leave_controller(f"127.0.0.1:{free_port()}", "j-000000", 0, "127.0.0.1:1", ALICE, None) is False
    assert time.monotonic() - start < 3


def test_an_unreachable_controller_is_reported_at_once_and_retried_until_the_limit(caplog) -> None:
    address = f"127.0.0.1:{free_port()}"
    caplog.set_level(logging.WARNING, logger="host_agent.join")
    start = time.monotonic()
    with pytest.raises(NetAggError) as err:
        join_controller(address, "j-000000", 0, ALICE, None, False, "127.0.0.1:0", retry_for=1.5)
    took = time.monotonic() - start
    assert f"controller {address} unreachable" in str(err.value) and "gave up after" in str(err.value)
    assert 1.4 < took < 4.0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith(f"controller {address} unreachable (")
    assert warnings[0].endswith("retrying in 1 s")


def test_join_succeeds_when_the_controller_comes_up_while_it_retries(tmp_path: Path) -> None:
    port = free_port()
    started: list = []

    def start_later() -> None:
        time.sleep(0.7)
        started.append(serve_controller(f"127.0.0.1:{port}", Store(tmp_path / "late.db"), Tokens(TOKENS)))

    t = threading.Thread(target=start_later)
    t.start()
    try:
        # the job does not exist: reaching the controller at all is what this shows (NOT_FOUND, not
        # "unreachable"), within the retry limit
        with pytest.raises(NetAggError) as err:
            join_controller(
                f"127.0.0.1:{port}", "j-000000", 0, ALICE, None, False, "127.0.0.1:0", retry_for=8
            )
        assert "NOT_FOUND" in str(err.value) and "unreachable" not in str(err.value)
    finally:
        t.join()
        for server, _, service in started:
            server.stop(grace=None)
            service.close()


def test_ctl_reports_an_unreachable_controller_in_one_line_then_gives_up(capsys) -> None:
    address = f"127.0.0.1:{free_port()}"
    assert netagg_main(["ctl", "--controller", address, "--token", ALICE, "--retry-for", "1", "jobs"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"controller {address} unreachable (") and lines[0].endswith("retrying in 1 s")
    assert lines[1].startswith(f"netagg ctl jobs: controller {address} unreachable")


def test_ctl_delete_needs_force_for_a_running_job(plane: Plane, capsys) -> None:
    job = plane.alice.CreateJob(pb.CreateJobRequest(spec=spec()))
    for r in range(2):
        plane.join(job, r)
    base = ["ctl", "--controller", plane.address, "--token", ALICE]
    assert netagg_main([*base, "delete", job.job_id]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "FAILED_PRECONDITION" in err and "--force" in err
    assert netagg_main([*base, "delete", "--force", job.job_id]) == 0
    assert f"deleted {job.job_id}" in capsys.readouterr().out
    assert netagg_main(["ctl", "--controller", plane.address, "--token", ADMIN, "switches"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:2] == ["SWITCH", "STATE"] and table[1].split()[:2] == ["sw1", "up"]


def _contrib(job: int, worker: int) -> bytes:
    """A CONTRIB the switch drops (nobody joined): counted for the job as a packet in."""
    return HEADER.pack(VERSION, int(MsgType.CONTRIB), 0, 0, job, worker, 0, 0, 0, 0, 0, 0)


needs_job_stats = pytest.mark.skipif(
    not hasattr(Dataplane, "job_stats"), reason="needs the dataplane's per-job counters (Dataplane.job_stats)"
)


@needs_job_stats
def test_a_joined_job_without_packets_is_idle_and_packets_make_it_running(plane: Plane) -> None:
    job = plane.alice.CreateJob(pb.CreateJobRequest(spec=spec()))
    for r in range(2):
        plane.join(job, r)
    assert plane.job(job.job_id).state == pb.JOB_STATE_RUNNING
    got = until(lambda: (j := plane.job(job.job_id)).state == pb.JOB_STATE_IDLE and j)  # idle_after 0.5 s
    assert isinstance(got, pb.Job) and "no packet" in got.state_detail

    def send() -> bool:
        plane.agents["sw1"].handle(_contrib(job.wire_job_id, 0), ("127.0.0.1", 6000))
        return plane.job(job.job_id).state == pb.JOB_STATE_RUNNING

    until(send)


Scrape = Callable[[], dict[tuple[str, frozenset], float]]


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Prometheus text as {(sample name, its labels): value}, parsed by prometheus_client's parser."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def series(metric: str, **labels: str) -> tuple[str, frozenset]:
    return metric, frozenset(labels.items())


def scrape_until(
    scrape: Scrape, key: tuple[str, frozenset], value: float
) -> dict[tuple[str, frozenset], float]:
    """The first scrape in which ``key`` has ``value`` (the monitor reads counters every INTERVAL)."""
    got: list[dict] = [{}]

    def shows() -> bool:
        got[0] = scrape()
        return got[0].get(key) == value

    until(shows)
    return got[0]


@pytest.fixture
def scrape(plane: Plane) -> Iterator[Scrape]:
    """GET of the controller's metrics endpoint, served on port 0, parsed."""
    server, port = serve_metrics("127.0.0.1", 0, plane.service)

    def get() -> dict[tuple[str, frozenset], float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            assert reply.status == 200
            return samples(reply.read().decode())

    try:
        yield get
    finally:
        server.shutdown()
        server.server_close()


def test_metrics_endpoint_shows_switches_and_jobs(plane: Plane, scrape: Scrape) -> None:
    job = plane.alice.CreateJob(pb.CreateJobRequest(spec=spec(name="metered")))
    plane.join(job, 0)
    got = scrape()

    def state(name: str) -> tuple[str, frozenset]:
        return series("netagg_job_state", job=job.job_id, name="metered", state=name)

    assert got[series("netagg_switch_up", switch="sw1")] == 1
    assert got[series("netagg_switch_slots", switch="sw1", use="used")] == 8
    assert got[series("netagg_switch_slots", switch="sw1", use="free")] == 56
    assert got[series("netagg_switch_jobs", switch="sw1")] == 1
    assert got[state("pending")] == 1 and got[state("running")] == 0 and got[state("idle")] == 0
    assert got[series("netagg_job_workers", job=job.job_id)] == 2
    assert got[series("netagg_job_workers_joined", job=job.job_id)] == 1
    plane.join(job, 1)
    assert scrape()[state("running")] == 1
    plane.agents["sw1"].server.stop(grace=None).wait()
    got = scrape_until(scrape, series("netagg_switch_up", switch="sw1"), 0)
    assert got[state("switch_down")] == 1 and got[state("running")] == 0


@needs_job_stats
def test_metrics_endpoint_shows_the_switch_counters_per_job(plane: Plane, scrape: Scrape) -> None:
    job = plane.alice.CreateJob(pb.CreateJobRequest(spec=spec(name="metered")))
    plane.join(job, 0)
    for _ in range(5):
        plane.agents["sw1"].handle(_contrib(job.wire_job_id, 0), ("127.0.0.1", 6000))
    at = {"job": job.job_id, "switch": "sw1"}
    got = scrape_until(scrape, series("netagg_job_packets_received_total", **at), 5)
    assert got[series("netagg_job_received_bytes_total", **at)] == 5 * 24
    assert got[series("netagg_job_drops_total", **at, reason="not_joined")] == 5
    assert got[series("netagg_job_refusals_total", **at)] == 5  # each answered with a REFUSE
    assert got[series("netagg_job_epoch", **at)] == 0 and got[series("netagg_job_switch_joined", **at)] == 0
    assert got[series("netagg_job_completions_total", **at)] == 0
    assert got[series("netagg_job_recoveries_total", **at)] == 0


def test_the_controller_process_serves_metrics(tmp_path: Path) -> None:
    with ControllerProcess(tmp_path / "ctl.db", token=ADMIN, extra=["--metrics", "127.0.0.1:0"]) as ctl:
        address = ctl.ready["metrics"]
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        assert reply.status == 200 and "# TYPE netagg_switch_up gauge" in text


@needs_job_stats
def test_ctl_stats_shows_per_job_rates(plane: Plane, capsys) -> None:
    job = plane.alice.CreateJob(pb.CreateJobRequest(spec=spec()))
    stop = threading.Event()

    def traffic() -> None:  # a steady trickle of the job's packets while ctl watches
        while not stop.wait(0.01):
            plane.agents["sw1"].handle(_contrib(job.wire_job_id, 0), ("127.0.0.1", 6000))

    t = threading.Thread(target=traffic)
    t.start()
    try:
        base = ["ctl", "--controller", plane.address, "--token", ALICE]
        assert netagg_main([*base, "stats", "--interval", "0.3", "--count", "2", job.job_id]) == 0
    finally:
        stop.set()
        t.join()
    out = capsys.readouterr().out
    [first, second] = [line for line in out.splitlines() if line.startswith(job.job_id + "  sw1")]
    assert first.split()[2:5] == ["-", "-", "-"]  # no interval before the first snapshot
    packets_per_s = float(second.split()[2])
    assert 10 < packets_per_s < 200  # about 100 a second, on a loaded machine


def test_a_switch_process_killed_and_restarted_gets_its_job_back(tmp_path: Path, switch_factory) -> None:
    """Real processes: `netagg controller` with fast health checks and `netagg switch --controller`,
    SIGKILLed and started again on the same data address (it registers again)."""
    extra = ["--health-interval", "0.1", "--health-failures", "2"]
    with ControllerProcess(tmp_path / "ctl.db", token=ADMIN, extra=extra) as ctl:
        listen = f"127.0.0.1:{free_port(udp=True)}"
        sw = switch_factory(None, controller=ctl.address, token=ADMIN, total_slots=64, listen=listen)
        with channel(ctl.address, ADMIN) as ch:
            stub = pb_grpc.ControllerStub(ch)
            job = stub.CreateJob(pb.CreateJobRequest(spec=spec()))
            [switch_id] = [s.switch_id for s in stub.ListSwitches(pb.ListSwitchesRequest()).switches]

            def state() -> int:
                [s] = stub.ListSwitches(pb.ListSwitchesRequest()).switches
                return s.state

            def installed() -> set[int]:
                stream = stub.StreamStats(pb.StreamStatsRequest(interval_seconds=0.1, job_ids=[job.job_id]))
                snap = next(iter(stream))
                stream.cancel()
                return {c.wire_job_id for c in snap.job_counters}

            assert state() == pb.SWITCH_STATE_UP and installed() == {job.wire_job_id}
            sw.proc.kill()  # SIGKILL
            sw.proc.wait()
            until(lambda: state() == pb.SWITCH_STATE_DOWN)
            assert stub.GetJob(pb.GetJobRequest(job_id=job.job_id)).state == pb.JOB_STATE_SWITCH_DOWN
            switch_factory(None, controller=ctl.address, token=ADMIN, total_slots=64, listen=listen)
            until(lambda: state() == pb.SWITCH_STATE_UP)
            [again] = stub.ListSwitches(pb.ListSwitchesRequest()).switches
            assert again.switch_id == switch_id and again.data_address == listen
            assert installed() == {job.wire_job_id}  # the new process carries the job
            assert stub.GetJob(pb.GetJobRequest(job_id=job.job_id)).state == pb.JOB_STATE_PENDING
