"""The controller in process on port 0, programming a real SwitchAgent (in process) over gRPC: every RPC,
its status codes and messages, tenants, TLS, restart, a tree. Placement alone, without gRPC, is tested in
tests/unit/test_controller.py."""

from __future__ import annotations

import random
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from controller import Store, serve_controller
from netagg.rpc import Tenant, Tokens, channel
from netagg.v1 import control_pb2 as pb
from netagg.v1 import control_pb2_grpc as pb_grpc
from switch.agent import serve_agent
from switch.core import Dataplane

ADMIN = "admin-token-0123456789abcdef"
ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdefgh"
TOKENS = [(ADMIN, Tenant("ops", admin=True)), (ALICE, Tenant("alice")), (BOB, Tenant("bob"))]


@dataclass
class Plane:
    address: str
    dataplane: Dataplane
    db: Path
    stubs: dict[str, pb_grpc.ControllerStub]
    agent_address: str

    def stub(self, who: str = "alice") -> pb_grpc.ControllerStub:
        return self.stubs[who]


def spec(**kw) -> pb.JobSpec:
    base = dict(name="job", workers=4, element_type=pb.ELEMENT_TYPE_FLOAT32, elements_per_packet=64, slots=16)
    return pb.JobSpec(**{**base, **kw})


def code_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


def _drain(stream: Any, request: Any) -> list[Any]:
    return list(stream(request))


def _start(db: Path) -> tuple[grpc.Server, int, object]:
    return serve_controller("127.0.0.1:0", Store(db), Tokens(TOKENS))


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Plane]:
    dataplane = Dataplane()
    agent, agent_port = serve_agent(
        dataplane, threading.Lock(), "127.0.0.1:0", Tokens.single(ADMIN), total_slots=40
    )
    db = tmp_path / "ctl.db"
    server, port, service = _start(db)
    address = f"127.0.0.1:{port}"
    channels = {who: channel(address, tok) for who, tok in (("admin", ADMIN), ("alice", ALICE), ("bob", BOB))}
    stubs = {who: pb_grpc.ControllerStub(ch) for who, ch in channels.items()}
    stubs["admin"].RegisterSwitch(
        pb.RegisterSwitchRequest(
            switch_id="sw1", data_address="127.0.0.1:47000", agent_address=f"127.0.0.1:{agent_port}"
        )
    )
    try:
        yield Plane(address, dataplane, db, stubs, f"127.0.0.1:{agent_port}")
    finally:
        for ch in channels.values():
            ch.close()
        server.stop(grace=None)
        service.close()  # type: ignore[attr-defined]
        agent.stop(grace=None)


def test_admit_place_and_free(plane: Plane) -> None:
    a = plane.stub().CreateJob(pb.CreateJobRequest(spec=spec(name="a", slots=16)))
    b = plane.stub().CreateJob(pb.CreateJobRequest(spec=spec(name="b", slots=16)))
    assert a.owner == "alice" and a.state == pb.JOB_STATE_PENDING and a.job_id != b.job_id
    ranges = sorted((p.slot_base, p.slots) for j in (a, b) for p in j.placements)
    assert ranges == [(0, 16), (16, 16)]
    installed = {c.job_id: (c.slot_base, c.slots, c.workers, c.elements) for c in plane.dataplane.jobs}
    assert installed == {
        a.wire_job_id: (a.placements[0].slot_base, 16, 4, 64),
        b.wire_job_id: (b.placements[0].slot_base, 16, 4, 64),
    }
    code, message = code_of(
        lambda: plane.stub().CreateJob(pb.CreateJobRequest(spec=spec(name="c", slots=16)))
    )
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "sw1 has 8 free (largest free range 8)" in message
    [sw] = plane.stub().ListSwitches(pb.ListSwitchesRequest()).switches
    assert sw.free_slots == 8 and sw.info.total_slots == 40
    plane.stub().DeleteJob(pb.DeleteJobRequest(job_id=a.job_id))
    assert a.wire_job_id not in {c.job_id for c in plane.dataplane.jobs}
    c = plane.stub().CreateJob(pb.CreateJobRequest(spec=spec(name="c", slots=16)))
    assert c.placements[0].slot_base == 0  # a's freed range
    listed = [j.job_id for j in plane.stub().ListJobs(pb.ListJobsRequest()).jobs]
    assert listed == [b.job_id, c.job_id]


def test_defaults_are_filled_in(plane: Plane) -> None:
    job = plane.stub().CreateJob(pb.CreateJobRequest(spec=spec(elements_per_packet=0, slots=0, workers=2)))
    assert job.spec.elements_per_packet == 16370  # the Python switch's largest
    assert job.spec.slots == 16 and job.placements[0].slots == 16


def test_tenants_see_and_touch_only_their_jobs(plane: Plane) -> None:
    job = plane.stub("alice").CreateJob(pb.CreateJobRequest(spec=spec()))
    for call in (
        lambda s: s.GetJob(pb.GetJobRequest(job_id=job.job_id)),
        lambda s: s.DeleteJob(pb.DeleteJobRequest(job_id=job.job_id)),
        lambda s: s.JoinJob(pb.JoinJobRequest(job_id=job.job_id, rank=0, address="127.0.0.1:5000")),
    ):
        code, message = code_of(lambda c=call: c(plane.stub("bob")))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "tenant 'alice'" in message
    assert plane.stub("bob").ListJobs(pb.ListJobsRequest()).jobs == []
    assert [j.job_id for j in plane.stub("admin").ListJobs(pb.ListJobsRequest()).jobs] == [job.job_id]
    code, _ = code_of(
        lambda: plane.stub("alice").RegisterSwitch(
            pb.RegisterSwitchRequest(
                switch_id="x", data_address="127.0.0.1:1", agent_address=plane.agent_address
            )
        )
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED


def test_no_token_or_a_wrong_one_is_unauthenticated_but_health_and_reflection_are_open(plane: Plane) -> None:
    for token in (None, "not-a-known-token-at-all"):
        with channel(plane.address, token) as ch:
            code, _ = code_of(lambda c=ch: pb_grpc.ControllerStub(c).ListJobs(pb.ListJobsRequest()))
            assert code == grpc.StatusCode.UNAUTHENTICATED
            health = health_pb2_grpc.HealthStub(ch)
            reply = health.Check(health_pb2.HealthCheckRequest(service="netagg.v1.Controller"))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            refl = reflection_pb2_grpc.ServerReflectionStub(ch)
            [answer] = list(
                refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
            )
            names = {s.name for s in answer.list_services_response.service}
            assert {"netagg.v1.Controller", "grpc.health.v1.Health"} <= names


def test_join(plane: Plane) -> None:
    job = plane.stub().CreateJob(pb.CreateJobRequest(spec=spec(workers=2)))
    j0 = plane.stub().JoinJob(pb.JoinJobRequest(job_id=job.job_id, rank=0, address="127.0.0.1:5000"))
    assert (j0.switch_address, j0.wire_job_id, j0.worker_id, j0.total_workers) == (
        "127.0.0.1:47000",
        job.wire_job_id,
        0,
        2,
    )
    assert (j0.slot_base, j0.slots, j0.elements_per_packet) == (job.placements[0].slot_base, 16, 64)
    again = pb.JoinJobRequest(job_id=job.job_id, rank=0, address="127.0.0.1:5000")
    assert plane.stub().JoinJob(again) == j0  # the same worker again: idempotent
    dup = pb.JoinJobRequest(job_id=job.job_id, rank=0, address="127.0.0.1:6000")
    code, message = code_of(lambda: plane.stub().JoinJob(dup))
    assert code == grpc.StatusCode.ALREADY_EXISTS and "127.0.0.1:5000" in message
    dup.replace = True
    plane.stub().JoinJob(dup)
    plane.stub().JoinJob(pb.JoinJobRequest(job_id=job.job_id, rank=1, address="127.0.0.1:6001"))
    got = plane.stub().GetJob(pb.GetJobRequest(job_id=job.job_id))
    assert got.state == pb.JOB_STATE_RUNNING and list(got.joined_ranks) == [0, 1]
    # every rank is in: their addresses are pinned on the switch
    [cfg] = plane.dataplane.jobs
    assert cfg.addresses == (("127.0.0.1", 6000), ("127.0.0.1", 6001))


def test_stats_stream(plane: Plane) -> None:
    job = plane.stub().CreateJob(pb.CreateJobRequest(spec=spec()))
    plane.dataplane.handle(b"\x00" * 5, ("127.0.0.1", 1))
    stream = plane.stub().StreamStats(pb.StreamStatsRequest(interval_seconds=0.1, job_ids=[job.job_id]))
    snaps = []
    for snap in stream:
        snaps.append(snap)
        if len(snaps) == 3:
            stream.cancel()
            break
    assert all([j.job_id for j in s.jobs] == [job.job_id] for s in snaps)
    assert snaps[-1].switch_counters["sw1"].drops["truncated"] == 1
    assert snaps[-1].time > snaps[0].time


def test_restart_keeps_jobs(plane: Plane, tmp_path: Path) -> None:
    job = plane.stub().CreateJob(pb.CreateJobRequest(spec=spec()))
    plane.stub().JoinJob(pb.JoinJobRequest(job_id=job.job_id, rank=3, address="127.0.0.1:5003"))
    plane.dataplane.remove(job.wire_job_id)  # as if the switch had lost it too
    server, port, service = _start(plane.db)  # a second controller on the same file
    try:
        with channel(f"127.0.0.1:{port}", ALICE) as ch:
            got = pb_grpc.ControllerStub(ch).GetJob(pb.GetJobRequest(job_id=job.job_id))
            assert got.spec == job.spec and list(got.joined_ranks) == [3]
            assert got.placements == job.placements and got.owner == "alice"
        for _ in range(100):  # it puts the job back on its switch in the background
            if job.wire_job_id in {c.job_id for c in plane.dataplane.jobs}:
                break
            threading.Event().wait(0.05)
        assert job.wire_job_id in {c.job_id for c in plane.dataplane.jobs}
    finally:
        server.stop(grace=None)
        service.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("request_spec", "code", "words"),
    [
        (None, grpc.StatusCode.INVALID_ARGUMENT, "spec is missing"),
        (spec(name=""), grpc.StatusCode.INVALID_ARGUMENT, "spec.name is missing"),
        (spec(name="bad name!"), grpc.StatusCode.INVALID_ARGUMENT, "spec.name"),
        (spec(workers=0), grpc.StatusCode.INVALID_ARGUMENT, "spec.workers must be 1-1024"),
        (spec(workers=10**9), grpc.StatusCode.INVALID_ARGUMENT, "spec.workers must be 1-1024"),
        (spec(element_type=pb.ELEMENT_TYPE_UNSPECIFIED), grpc.StatusCode.INVALID_ARGUMENT, "element_type"),
        (spec(element_type=7), grpc.StatusCode.INVALID_ARGUMENT, "element_type"),
        (spec(elements_per_packet=10**6), grpc.StatusCode.INVALID_ARGUMENT, "elements_per_packet must be"),
        (spec(slots=10**6), grpc.StatusCode.INVALID_ARGUMENT, "spec.slots must be"),
        (spec(slots=4096, elements_per_packet=16370), grpc.StatusCode.INVALID_ARGUMENT, "64 MiB"),
        (spec(workers=64), grpc.StatusCode.FAILED_PRECONDITION, "at most 32 workers"),
        (spec(slots=41), grpc.StatusCode.RESOURCE_EXHAUSTED, "has 40 free"),
    ],
)
def test_bad_job_specs(plane: Plane, request_spec, code, words) -> None:
    req = pb.CreateJobRequest() if request_spec is None else pb.CreateJobRequest(spec=request_spec)
    got, message = code_of(lambda: plane.stub().CreateJob(req))
    assert got == code and words in message, message
    assert plane.dataplane.jobs == []


def test_hundreds_of_generated_bad_requests_keep_it_serving(plane: Plane) -> None:
    """300 generated bad calls of every RPC: each gets a specific status, nothing changes, and the
    controller still admits a good job afterwards."""
    rng = random.Random(11)
    good = plane.stub().CreateJob(pb.CreateJobRequest(spec=spec(name="keep", slots=8)))
    bad_ids = ["", "nope", "j-000000", "j-" + "f" * 40, "j-zzzzzz", "x" * 500]
    bad_addresses = ["", "nowhere", "127.0.0.1:0", "0.0.0.0:5", "[::1", "host:99999", "1.2.3.4:-1"]
    allowed = {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.UNAVAILABLE,
    }
    seen: dict[grpc.StatusCode, int] = {}
    admin = plane.stub("admin")
    for i in range(300):
        stub = plane.stub(rng.choice(["alice", "alice", "bob"]))
        kind = i % 7
        method: Any
        req: Any
        if kind == 0:
            method, req = (
                stub.CreateJob,
                pb.CreateJobRequest(
                    spec=spec(
                        name=rng.choice(["", "ok", "bad name", "x" * 65]),
                        workers=rng.choice([0, 33, 2000, 10**9]),
                        element_type=rng.choice([0, 1, 2, 9]),
                        elements_per_packet=rng.choice([64, 16371, 10**7]),
                        slots=rng.choice([0, 99999, 41]),
                    )
                ),
            )
        elif kind == 1:
            method, req = stub.GetJob, pb.GetJobRequest(job_id=rng.choice(bad_ids))
        elif kind == 2:
            method, req = stub.DeleteJob, pb.DeleteJobRequest(job_id=rng.choice(bad_ids))
        elif kind == 3:
            method, req = (
                stub.JoinJob,
                pb.JoinJobRequest(
                    job_id=rng.choice([*bad_ids, good.job_id]),
                    rank=rng.choice([4, 100, 2**31]),
                    address=rng.choice(bad_addresses),
                ),
            )
        elif kind == 4:
            method, req = (
                admin.RegisterSwitch,
                pb.RegisterSwitchRequest(
                    switch_id=rng.choice(["", "bad id!", "s" * 200, "ok"]),
                    data_address=rng.choice(bad_addresses),
                    agent_address=rng.choice([*bad_addresses, "127.0.0.1:1"]),
                ),
            )
        elif kind == 5:
            method, req = (
                partial(_drain, stub.StreamStats),
                pb.StreamStatsRequest(
                    interval_seconds=rng.choice([-1.0, 0.01, 1e9]), job_ids=[rng.choice(bad_ids)]
                ),
            )
        else:
            with channel(plane.address, rng.choice([None, "wrong-token-wrong-token"])) as ch:
                code, message = code_of(lambda c=ch: pb_grpc.ControllerStub(c).ListJobs(pb.ListJobsRequest()))
                seen[code] = seen.get(code, 0) + 1
                assert code == grpc.StatusCode.UNAUTHENTICATED and message
                continue
        call = partial(method, req)
        code, message = code_of(call)
        assert code in allowed, (code, message)
        assert message, code
        seen[code] = seen.get(code, 0) + 1
    assert seen[grpc.StatusCode.INVALID_ARGUMENT] > 100 and seen[grpc.StatusCode.UNAUTHENTICATED] > 30
    assert [j.job_id for j in plane.stub("admin").ListJobs(pb.ListJobsRequest()).jobs] == [good.job_id]
    assert [c.job_id for c in plane.dataplane.jobs] == [good.wire_job_id]
    assert len(plane.stub("admin").ListSwitches(pb.ListSwitchesRequest()).switches) == 1
    plane.stub().CreateJob(pb.CreateJobRequest(spec=spec(name="after", slots=8)))


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make a test certificate")
def test_tls(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    server, port, service = serve_controller(
        "127.0.0.1:0", Store(tmp_path / "db"), Tokens(TOKENS), tls_cert=str(cert), tls_key=str(key)
    )
    try:
        with channel(f"127.0.0.1:{port}", ALICE, tls_ca=cert) as ch:
            assert pb_grpc.ControllerStub(ch).ListJobs(pb.ListJobsRequest(), timeout=10).jobs == []
        with channel(f"127.0.0.1:{port}", ALICE) as ch:  # plain text to a TLS server fails
            code, _ = code_of(lambda: pb_grpc.ControllerStub(ch).ListJobs(pb.ListJobsRequest(), timeout=5))
            assert code == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(grace=None)
        service.close()


def test_worker_arguments_and_controller_errors(plane: Plane) -> None:
    from host_agent.worker import NetAggError, Worker

    job = plane.stub().CreateJob(pb.CreateJobRequest(spec=spec(workers=2)))
    with pytest.raises(ValueError, match="either switch"):
        Worker("127.0.0.1:1", 0, 2, controller=plane.address)
    with pytest.raises(ValueError, match="controller's job id"):
        Worker(controller=plane.address, job=3, rank=0)
    with pytest.raises(ValueError, match="world_size is required"):
        Worker("127.0.0.1:1", 0)
    with pytest.raises(NetAggError, match="PERMISSION_DENIED"):
        Worker(controller=plane.address, job=job.job_id, rank=0, token=BOB)
    with pytest.raises(NetAggError, match="INVALID_ARGUMENT: rank 2 is outside"):
        Worker(controller=plane.address, job=job.job_id, rank=2, token=ALICE)
    with pytest.raises(NetAggError, match="UNAUTHENTICATED"):
        Worker(controller=plane.address, job=job.job_id, rank=0, token="a-token-nobody-knows")
    with pytest.raises(NetAggError, match="has 2 workers, but world_size=3"):
        Worker(controller=plane.address, job=job.job_id, rank=0, world_size=3, token=ALICE)


def test_tree_placement(tmp_path: Path) -> None:
    """Three in-process switch agents registered as a spine and two leaves: a job with workers at both
    leaves is installed as a tree, ranks map to leaves, and each switch's workers are pinned."""
    planes, servers = {}, []
    server, port, service = _start(tmp_path / "tree.db")
    address = f"127.0.0.1:{port}"
    try:
        with channel(address, ADMIN) as ch:
            stub = pb_grpc.ControllerStub(ch)
            for i, (name, parent) in enumerate((("spine", ""), ("leaf1", "spine"), ("leaf2", "spine"))):
                dp = Dataplane()
                agent, agent_port = serve_agent(
                    dp, threading.Lock(), "127.0.0.1:0", Tokens.single(ADMIN), total_slots=64
                )
                servers.append(agent)
                planes[name] = dp
                stub.RegisterSwitch(
                    pb.RegisterSwitchRequest(
                        switch_id=name,
                        data_address=f"127.0.0.1:{47000 + i}",
                        agent_address=f"127.0.0.1:{agent_port}",
                        parent_switch_id=parent,
                    )
                )
            tree_spec = spec(workers=4, slots=8, workers_at={"leaf1": 1, "leaf2": 3})
            job = stub.CreateJob(pb.CreateJobRequest(spec=tree_spec))
            assert {(p.switch_id, p.parent_switch_id) for p in job.placements} == {
                ("spine", ""),
                ("leaf1", "spine"),
                ("leaf2", "spine"),
            }
            [root] = planes["spine"].jobs
            [l1] = planes["leaf1"].jobs
            [l2] = planes["leaf2"].jobs
            assert (root.workers, root.total_workers, root.parent) == (2, 4, None)
            assert root.addresses == (("127.0.0.1", 47001), ("127.0.0.1", 47002))  # pinned at once
            assert (l1.workers, l1.parent, l1.parent_worker) == (1, ("127.0.0.1", 47000), 0)
            assert (l2.workers, l2.parent, l2.parent_worker, l2.total_workers) == (
                3,
                ("127.0.0.1", 47000),
                1,
                4,
            )
            assert len({(c.slot_base, c.slots) for c in (root, l1, l2)}) == 1
            # one key for the whole tree: the leaves JOIN their parent with it
            assert root.key != 0 and root.key == l1.key == l2.key == l1.parent_key == l2.parent_key
            assert root.parent_key == 0
            joins = [
                stub.JoinJob(pb.JoinJobRequest(job_id=job.job_id, rank=r, address=f"127.0.0.1:{6000 + r}"))
                for r in range(4)
            ]
            assert [(j.switch_address, j.worker_id) for j in joins] == [
                ("127.0.0.1:47001", 0),
                ("127.0.0.1:47002", 0),
                ("127.0.0.1:47002", 1),
                ("127.0.0.1:47002", 2),
            ]
            assert planes["leaf2"].jobs[0].addresses == tuple(("127.0.0.1", 6001 + r) for r in range(3))
            bad = spec(workers=4, workers_at={"leaf1": 1, "leaf2": 2})
            code, message = code_of(lambda: stub.CreateJob(pb.CreateJobRequest(spec=bad)))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "adds up to 3" in message
            bad = spec(workers=2, workers_at={"leaf1": 1, "nowhere": 1})
            code, message = code_of(lambda: stub.CreateJob(pb.CreateJobRequest(spec=bad)))
            assert code == grpc.StatusCode.FAILED_PRECONDITION and "nowhere" in message
            stub.DeleteJob(pb.DeleteJobRequest(job_id=job.job_id, force=True))  # every rank joined: running
            assert all(dp.jobs == [] for dp in planes.values())
    finally:
        server.stop(grace=None)
        service.close()  # type: ignore[attr-defined]
        for agent in servers:
            agent.stop(grace=None)
