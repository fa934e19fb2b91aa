"""The SwitchAgent over gRPC: the Python switch's servicer in process on port 0 over a real Dataplane
(every status code, tokens, health), and a switch process with no static job whose jobs are installed
and removed through its SwitchAgent API."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from host_agent.worker import NetAggError, Worker
from netagg.cli.launch import run_workers
from netagg.rpc import Tokens, channel
from netagg.v1 import control_pb2 as pb
from netagg.v1 import control_pb2_grpc as pb_grpc
from switch.agent import serve_agent
from switch.core import Dataplane
from tests.integration import workers as wk

TOKEN = "agent-test-token-0123456789"


@pytest.fixture
def agent() -> Iterator[tuple[pb_grpc.SwitchAgentStub, Dataplane, str]]:
    """(stub with the token, the dataplane it programs, the server's address)."""
    dataplane = Dataplane()
    server, port = serve_agent(
        dataplane, threading.Lock(), "127.0.0.1:0", Tokens.single(TOKEN), total_slots=4096
    )
    ch = channel(f"127.0.0.1:{port}", TOKEN)
    try:
        yield pb_grpc.SwitchAgentStub(ch), dataplane, f"127.0.0.1:{port}"
    finally:
        ch.close()
        server.stop(grace=None)


def job(**kw) -> pb.InstallJobRequest:
    base = dict(wire_job_id=7, workers=4, slots=16, elements_per_packet=64)
    return pb.InstallJobRequest(**{**base, **kw})


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


def test_info_and_health(agent) -> None:
    stub, _, target = agent
    info = stub.GetInfo(pb.GetInfoRequest())
    assert info.kind == "python" and info.max_workers == 32 and info.max_elements_per_packet == 16370
    assert info.total_slots == 4096
    with channel(target, None) as ch:  # health needs no token
        health = health_pb2_grpc.HealthStub(ch)
        reply = health.Check(health_pb2.HealthCheckRequest(service="netagg.v1.SwitchAgent"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_install_remove_and_counters(agent) -> None:
    stub, dataplane, _ = agent
    stub.InstallJob(
        job(worker_addresses=[f"127.0.0.1:{5000 + i}" for i in range(4)], multicast_group="239.255.0.9:47009")
    )
    [cfg] = dataplane.jobs
    assert (cfg.job_id, cfg.workers, cfg.slots, cfg.elements) == (7, 4, 16, 64)
    assert cfg.addresses == tuple(("127.0.0.1", 5000 + i) for i in range(4))
    assert cfg.multicast == ("239.255.0.9", 47009)
    assert code_of(lambda: stub.InstallJob(job())) == grpc.StatusCode.ALREADY_EXISTS
    overlap = code_of(lambda: stub.InstallJob(job(wire_job_id=8, slot_base=8)))
    assert overlap == grpc.StatusCode.INVALID_ARGUMENT
    dataplane.handle(b"\x01" * 10, ("127.0.0.1", 9))  # one truncated datagram
    assert stub.GetCounters(pb.GetCountersRequest()).drops["truncated"] == 1
    assert stub.ResetCounters(pb.ResetCountersRequest()).drops["truncated"] == 1
    assert stub.GetCounters(pb.GetCountersRequest()).drops["truncated"] == 0
    stub.RemoveJob(pb.RemoveJobRequest(wire_job_id=7))
    assert dataplane.jobs == []
    assert code_of(lambda: stub.RemoveJob(pb.RemoveJobRequest(wire_job_id=7))) == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(workers=0), "workers must be 1-32"),
        (dict(workers=33), "workers must be 1-32"),
        (dict(slots=0), "slots"),
        (dict(elements_per_packet=0), "elements must be"),
        (dict(elements_per_packet=20000), "elements must be"),
        (dict(wire_job_id=70000), "wire_job_id must be 0-65535"),
        (dict(slot_base=4094, slots=4), "outside this switch's 4096 slots"),
        (dict(slots=2048, elements_per_packet=16370), "64 MiB window"),
        (dict(total_workers=2), "total_workers"),
        (dict(worker_addresses=["nowhere"]), "worker_addresses[]: expected HOST:PORT, got 'nowhere'"),
        (dict(worker_addresses=["127.0.0.1:0"] * 4), "port 0 is not an address"),
        (dict(worker_addresses=["127.0.0.1:1"]), "1 addresses for 4 workers"),
        (dict(multicast_group="10.0.0.1:5"), "multicast"),
    ],
)
def test_bad_install_requests_say_what_is_wrong(agent, kw, message) -> None:
    stub, dataplane, _ = agent
    with pytest.raises(grpc.RpcError) as err:
        stub.InstallJob(job(**kw))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()
    assert dataplane.jobs == []


def test_hundreds_of_generated_bad_requests_leave_it_serving(agent) -> None:
    stub, dataplane, _ = agent
    stub.InstallJob(job(wire_job_id=1, slot_base=0, slots=8))
    rng = random.Random(5)
    codes: dict[grpc.StatusCode, int] = {}
    for _ in range(300):
        kind = rng.randrange(3)
        method: object
        if kind == 0:
            method = stub.InstallJob
            req: object = job(
                wire_job_id=rng.choice([1, 70000, rng.randrange(2, 100)]),
                workers=rng.choice([0, 4, 40]),
                slots=rng.choice([0, 8, 40000]),
                slot_base=rng.choice([0, 4, 32766]),
                elements_per_packet=rng.choice([0, 64, 99999]),
            )
        elif kind == 1:
            method, req = stub.RemoveJob, pb.RemoveJobRequest(wire_job_id=rng.randrange(1000, 2000))
        else:
            method, req = stub.InstallJob, job(wire_job_id=1)  # already installed
        try:
            method(req)  # type: ignore[operator]
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()
        codes[code] = codes.get(code, 0) + 1
        if code == grpc.StatusCode.OK:  # a generated request that happened to be valid: undo it
            for cfg in dataplane.jobs:
                if cfg.job_id != 1:
                    dataplane.remove(cfg.job_id)
    assert set(codes) <= {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
    }
    assert codes[grpc.StatusCode.INVALID_ARGUMENT] > 50 and codes[grpc.StatusCode.NOT_FOUND] > 50
    assert [c.job_id for c in dataplane.jobs] == [1]
    assert stub.GetInfo(pb.GetInfoRequest()).kind == "python"


def test_calls_without_a_valid_token_are_refused(agent) -> None:
    _, dataplane, target = agent
    for token, word in ((None, "no bearer token"), ("wrong-token-0123456789", "not valid")):
        with channel(target, token) as other:
            stub = pb_grpc.SwitchAgentStub(other)
            with pytest.raises(grpc.RpcError) as err:
                stub.InstallJob(job())
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and word in err.value.details()
            # health stays open, for probes
            health = health_pb2_grpc.HealthStub(other)
            assert (
                health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
            )
    assert dataplane.jobs == []


def test_set_workers_pins_addresses(agent) -> None:
    stub, dataplane, _ = agent
    stub.InstallJob(job(workers=2))
    addresses = ["127.0.0.1:5000", "127.0.0.1:5001"]
    stub.SetWorkers(pb.SetWorkersRequest(wire_job_id=7, worker_addresses=addresses))
    [cfg] = dataplane.jobs
    assert cfg.addresses == (("127.0.0.1", 5000), ("127.0.0.1", 5001))
    from netagg.protocol import HEADER, VERSION, MsgType

    join = HEADER.pack(VERSION, MsgType.JOIN, 0, 0, 7, 1, 0, 0, 99, 0, 0, 0)
    [(answer, _)] = dataplane.handle(join, ("127.0.0.1", 6666))  # not worker 1's address: refused
    assert answer[1] == MsgType.REFUSE
    assert dataplane.drops["wrong_source"] == 1
    assert dataplane.handle(join, ("127.0.0.1", 5001))  # PENDING: worker 0 has not joined
    bad = pb.SetWorkersRequest(wire_job_id=7, worker_addresses=addresses[:1])
    assert code_of(lambda: stub.SetWorkers(bad)) == grpc.StatusCode.INVALID_ARGUMENT
    bad = pb.SetWorkersRequest(wire_job_id=7, worker_addresses=["x", "y"])
    assert code_of(lambda: stub.SetWorkers(bad)) == grpc.StatusCode.INVALID_ARGUMENT
    missing = pb.SetWorkersRequest(wire_job_id=8, worker_addresses=addresses)
    assert code_of(lambda: stub.SetWorkers(missing)) == grpc.StatusCode.NOT_FOUND


def test_jobs_through_the_agent(switch_factory) -> None:
    token = "integration-agent-token-42"
    sw = switch_factory(None, agent="127.0.0.1:0", token=token)
    assert sw.agent_address is not None
    with channel(sw.agent_address, None) as ch:  # no token: refused
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.SwitchAgentStub(ch).GetInfo(pb.GetInfoRequest())
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with channel(sw.agent_address, token) as ch:
        stub = pb_grpc.SwitchAgentStub(ch)
        stub.InstallJob(pb.InstallJobRequest(wire_job_id=1, workers=4, slots=16, elements_per_packet=1024))
        stub.InstallJob(
            pb.InstallJobRequest(wire_job_id=2, workers=2, slot_base=16, slots=64, elements_per_packet=64)
        )
        cases = [((100_000,), "int32"), ((3, 3333), "float32")]
        for rank in run_workers(wk.sweep_job, 4, sw.address, 4, 1, cases, timeout=120):
            assert all(r["ok"] for r in rank["results"]), rank
        for rank in run_workers(wk.sweep_job, 2, sw.address, 2, 2, cases, timeout=120):
            assert all(r["ok"] for r in rank["results"]), rank
        counters = stub.GetCounters(pb.GetCountersRequest())
        assert counters.counters["completions"] > 0 and counters.drops["unknown_job"] == 0
        stub.RemoveJob(pb.RemoveJobRequest(wire_job_id=2))
    with pytest.raises(NetAggError, match=r"has no job 2 \(it was deleted"):  # refused at once, not timed out
        Worker(sw.address, 0, 2, job=2, join_timeout=10.0)


def test_an_assembled_switch_serves_its_agent_and_packets() -> None:
    """switch.daemon.PythonSwitch (what `netagg switch --agent` runs): the UDP loop and the agent share
    one dataplane."""
    import socket

    from switch.daemon import AgentOptions, PythonSwitch, PythonSwitchOptions

    options = PythonSwitchOptions(
        listen=("127.0.0.1", 0), agent=AgentOptions(("127.0.0.1", 0), Tokens.single(TOKEN))
    )
    with PythonSwitch(options) as sw:
        sw.start()
        assert "no static job; SwitchAgent on 127.0.0.1:" in sw.description
        with channel(f"127.0.0.1:{sw.agent_port}", TOKEN) as ch:
            stub = pb_grpc.SwitchAgentStub(ch)
            stub.InstallJob(pb.InstallJobRequest(wire_job_id=3, workers=2, slots=4, elements_per_packet=8))
            assert [c.job_id for c in sw.dataplane.jobs] == [3]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b"\x01" * 10, sw.address)  # truncated
                for _ in range(100):
                    if stub.GetCounters(pb.GetCountersRequest()).drops["truncated"] == 1:
                        break
                    threading.Event().wait(0.02)
            assert stub.GetCounters(pb.GetCountersRequest()).drops["truncated"] == 1
    assert sw.agent is None
