"""A switch process with no static job: jobs installed and removed through its SwitchAgent API."""

from __future__ import annotations

import grpc
import pytest

from host_agent.worker import NetAggTimeout, Worker
from netagg.cli.launch import run_workers
from netagg.rpc import channel
from netagg.v1 import control_pb2 as pb
from netagg.v1 import control_pb2_grpc as pb_grpc
from tests.integration import workers as wk


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
    with pytest.raises(NetAggTimeout, match="did not answer JOIN"):
        Worker(sw.address, 0, 2, job=2, join_timeout=1.0)
