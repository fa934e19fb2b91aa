"""The netagg torch backend without sockets: its environment, its registration, and the private torch
names it relies on (these tests fail loudly when a torch release renames them)."""

from __future__ import annotations

import inspect

import pytest

from host_agent.torch_config import BackendConfig, config_from_env


def test_static_job_from_env() -> None:
    c = config_from_env({"NETAGG_SWITCH": "10.0.0.1:47000"})
    assert (c.switch, c.controller, c.job, c.key, c.timeout) == ("10.0.0.1:47000", None, 1, None, 10.0)
    assert c.worker_kwargs() == {"job": 1, "key": None, "timeout": 10.0, "switch": "10.0.0.1:47000"}
    c = config_from_env(
        {"NETAGG_SWITCH": "h:1", "NETAGG_JOB": "7", "NETAGG_KEY": "00ff", "NETAGG_TIMEOUT": "2.5"}
    )
    assert (c.job, c.key, c.timeout) == (7, 255, 2.5)
    assert c.describe() == "job 7 at the switch h:1"


def test_controller_job_from_env() -> None:
    env = {
        "NETAGG_CONTROLLER": "ctl:47100",
        "NETAGG_JOB": "j-abc",
        "NETAGG_TOKEN": "t",
        "NETAGG_TLS_CA": "ca.pem",
    }
    c = config_from_env(env)
    assert c == BackendConfig(switch=None, controller="ctl:47100", job="j-abc", token="t", tls_ca="ca.pem")
    kwargs = c.worker_kwargs()
    assert kwargs["controller"] == "ctl:47100" and "switch" not in kwargs and kwargs["token"] == "t"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "set NETAGG_SWITCH=HOST:PORT"),
        ({"NETAGG_SWITCH": "a:1", "NETAGG_CONTROLLER": "b:2"}, "not both"),
        ({"NETAGG_SWITCH": "nowhere"}, "NETAGG_SWITCH='nowhere' is not HOST:PORT"),
        ({"NETAGG_SWITCH": "h:0"}, "needs a port"),
        ({"NETAGG_SWITCH": "h:1", "NETAGG_JOB": "j-1"}, "int job id"),
        ({"NETAGG_SWITCH": "h:1", "NETAGG_JOB": "70000"}, "not a job id"),
        ({"NETAGG_CONTROLLER": "h:1"}, "NETAGG_JOB to the controller's job id"),
        ({"NETAGG_CONTROLLER": "h:1", "NETAGG_JOB": "5"}, "not '5'"),
        ({"NETAGG_SWITCH": "h:1", "NETAGG_KEY": "xyz"}, "NETAGG_KEY"),
        ({"NETAGG_SWITCH": "h:1", "NETAGG_TIMEOUT": "0"}, "NETAGG_TIMEOUT"),
        ({"NETAGG_SWITCH": "h:1", "NETAGG_TIMEOUT": "soon"}, "NETAGG_TIMEOUT"),
    ],
)
def test_bad_env_says_what_to_set(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config_from_env(env)


def test_import_registers_the_backend() -> None:
    pytest.importorskip("torch")
    import torch.distributed as dist

    import host_agent
    from host_agent.torch_backend import BACKEND, create_process_group

    assert host_agent.register_torch_backend()
    assert BACKEND in dist.Backend.backend_list
    assert dist.Backend._plugins[BACKEND.upper()].creator_fn is create_process_group
    assert dist.Backend.backend_capability[BACKEND] == ["cpu"]
    assert dist.Backend.default_device_backend_map["cpu"] == "gloo"  # gloo stays the CPU default


def test_private_torch_names() -> None:
    """Every private or unstable torch name the backend uses, as the backend uses it."""
    torch = pytest.importorskip("torch")
    import torch.distributed as dist

    from host_agent.torch_backend import NetAggProcessGroup
    from host_agent.torch_gloo import FutureWork

    # a Python Work over a torch future: done with it, and wait() raises its error
    fut = torch.futures.Future()
    work = FutureWork(fut)
    assert isinstance(work, dist.Work) and not work.is_completed()
    fut.set_result([torch.ones(1)])
    assert work.wait() and work.is_completed() and work.result()[0].item() == 1.0
    assert work.get_future() is fut
    failed = torch.futures.Future()
    failed.set_exception(RuntimeError("the switch is gone"))
    with pytest.raises(RuntimeError, match="the switch is gone"):
        FutureWork(failed).wait()
    # c10d names a custom group after its creator returns it; DeviceMesh reads group_name
    assert hasattr(dist.ProcessGroup, "_set_group_name") and hasattr(dist.ProcessGroup, "group_name")
    pg = NetAggProcessGroup(0, 1, None, None, "test")
    pg._set_group_name("7")
    assert pg.group_name == "7" and pg.size() == 1 and pg.rank() == 0
    # the creator's signature (register_backend without extended_api) and its devices= argument
    params = inspect.signature(dist.Backend.register_backend).parameters
    assert {"name", "func", "extended_api", "devices"} <= set(params)
    source = inspect.getsource(dist.distributed_c10d._new_process_group_helper)
    assert "creator_fn(\n                    backend_prefix_store, group_rank, group_size, timeout" in source
    assert (
        "issubclass(type(backend_class), ProcessGroup)" in source
        and "pg._set_group_name(group_name)" in source
    )
    # the methods c10d calls on a Python group, and gloo's that the fallbacks call
    for name in (
        "all_gather_single",
        "reduce_scatter_single",
        "all_gather_single_coalesced",
        "reduce_scatter_single_coalesced",
        "allgather_into_tensor_coalesced",
        "reduce_scatter_tensor_coalesced",
        "_allgather_base",
        "_reduce_scatter_base",
        "allreduce_coalesced",
    ):
        assert name in vars(NetAggProcessGroup), name
        assert hasattr(dist.ProcessGroup, name), name
    for name in ("_allgather_base", "_reduce_scatter_base", "alltoall_base", "monitored_barrier"):
        assert hasattr(dist.ProcessGroupGloo, name), name
    # FSDP2 calls the group's all_gather_single / reduce_scatter_single through these
    from torch.distributed.fsdp._fully_shard import _fsdp_collectives as fc

    assert "dist.all_gather_single(" in inspect.getsource(fc.DefaultAllGather)
    assert "dist.reduce_scatter_single(" in inspect.getsource(fc.DefaultReduceScatter)
    # torch's entry point group for out-of-tree backends (pyproject.toml), called during import torch
    assert '"torch.backends"' in inspect.getsource(torch._import_device_backends)
