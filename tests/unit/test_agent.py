"""The switch's control interface without gRPC or sockets: the Python backend over a real Dataplane, the
one place backend exceptions become status codes (the servicer called in process), and how the BMv2
driver runs simple_switch_CLI. (The servicer over a real gRPC server: tests/integration/test_agent.py.)"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import grpc
import pytest

from netagg.protocol import HEADER, VERSION, MsgType
from netagg.v1 import control_pb2 as pb
from switch.agent import SwitchAgentService
from switch.backend import (
    AlreadyExists,
    BackendError,
    InvalidArgument,
    NotFound,
    PythonBackend,
    ResourceExhausted,
    SwitchBackend,
    SwitchInfo,
    Unavailable,
)
from switch.bmv2 import Bmv2Error, cli_command
from switch.core import Dataplane, JobConfig


def backend(total_slots: int = 4096) -> tuple[PythonBackend, Dataplane]:
    dataplane = Dataplane()
    return PythonBackend(dataplane, threading.Lock(), total_slots=total_slots), dataplane


def job(**kw) -> JobConfig:
    return JobConfig(**{**dict(job_id=7, workers=4, slots=16, elements=64), **kw})


def test_it_is_a_switch_backend() -> None:
    b, _ = backend()
    assert isinstance(b, SwitchBackend)
    info = b.info()
    assert (info.kind, info.total_slots, info.max_elements_per_packet, info.max_workers) == (
        "python",
        4096,
        16370,
        32,
    )
    with pytest.raises(ValueError, match="total_slots must be 1-"):
        PythonBackend(Dataplane(), threading.Lock(), total_slots=0)


def test_install_remove_and_counters() -> None:
    b, dataplane = backend()
    b.install(job(addresses=tuple(("127.0.0.1", 5000 + i) for i in range(4))))
    [cfg] = dataplane.jobs
    assert (cfg.job_id, cfg.workers, cfg.slots, cfg.elements) == (7, 4, 16, 64)
    with pytest.raises(AlreadyExists, match="job 7 is already installed"):
        b.install(job())
    with pytest.raises(InvalidArgument, match="overlap"):
        b.install(job(job_id=8, slot_base=8))
    with pytest.raises(InvalidArgument, match="outside this switch's 4096 slots"):
        b.install(job(job_id=9, slot_base=4094, slots=4))
    dataplane.handle(b"\x01" * 10, ("127.0.0.1", 9))  # one truncated datagram
    counters = b.counters()
    assert counters["drops"]["truncated"] == 1 and counters["counters"]["packets_in"] == 1
    assert b.counters(reset=True)["drops"]["truncated"] == 1
    assert b.counters()["drops"]["truncated"] == 0 and b.counters()["counters"] == {}
    b.remove(7)
    assert dataplane.jobs == []
    with pytest.raises(NotFound, match="job 7 is not installed"):
        b.remove(7)


def test_set_workers_pins_addresses() -> None:
    b, dataplane = backend()
    b.install(job(workers=2))
    b.set_workers(7, [("127.0.0.1", 5000), ("127.0.0.1", 5001)])
    [cfg] = dataplane.jobs
    assert cfg.addresses == (("127.0.0.1", 5000), ("127.0.0.1", 5001))
    join = HEADER.pack(VERSION, MsgType.JOIN, 0, 0, 7, 1, 0, 0, 99, 0, 0, 0)
    [(answer, dests)] = dataplane.handle(join, ("127.0.0.1", 6666))  # not worker 1's address: refused
    assert answer[1] == MsgType.REFUSE and dests == [("127.0.0.1", 6666)]
    assert dataplane.drops["wrong_source"] == 1
    with pytest.raises(InvalidArgument, match="1 addresses for 2 workers"):
        b.set_workers(7, [("127.0.0.1", 5000)])
    with pytest.raises(NotFound):
        b.set_workers(8, [("127.0.0.1", 5000), ("127.0.0.1", 5001)])


def test_the_dataplane_lock_is_held_while_a_job_changes() -> None:
    dataplane = Dataplane()
    lock = threading.Lock()
    b = PythonBackend(dataplane, lock)
    seen = []
    original = dataplane.install

    def install(cfg: JobConfig) -> None:
        seen.append(lock.locked())
        original(cfg)

    dataplane.install = install  # type: ignore[method-assign]
    b.install(job())
    assert seen == [True] and not lock.locked()


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, details)
        self.code, self.details = code, details


class _Context:
    """grpc.ServicerContext's abort, enough to call the servicer without a server."""

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _Aborted(code, details)


class _Failing:
    """A backend whose every call raises ``exc``."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def info(self) -> SwitchInfo:
        raise self.exc

    def install(self, cfg: JobConfig) -> None:
        raise self.exc

    def remove(self, job_id: int) -> None:
        raise self.exc

    def set_workers(self, job_id: int, addresses: object) -> None:
        raise self.exc

    def counters(self, *, reset: bool = False) -> dict[str, dict[str, int]]:
        raise self.exc


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (InvalidArgument("bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (NotFound("gone"), grpc.StatusCode.NOT_FOUND),
        (AlreadyExists("there"), grpc.StatusCode.ALREADY_EXISTS),
        (ResourceExhausted("full"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (Unavailable("exited"), grpc.StatusCode.UNAVAILABLE),
        (BackendError("odd"), grpc.StatusCode.INTERNAL),
        (Bmv2Error("runtime said no"), grpc.StatusCode.INTERNAL),
    ],
)
def test_every_backend_error_has_its_status_code(exc: BackendError, code: grpc.StatusCode) -> None:
    service = SwitchAgentService(_Failing(exc))
    calls = [
        lambda ctx: service.GetInfo(pb.GetInfoRequest(), ctx),
        lambda ctx: service.InstallJob(
            pb.InstallJobRequest(wire_job_id=1, workers=2, slots=4, elements_per_packet=8), ctx
        ),
        lambda ctx: service.RemoveJob(pb.RemoveJobRequest(wire_job_id=1), ctx),
        lambda ctx: service.SetWorkers(
            pb.SetWorkersRequest(wire_job_id=1, worker_addresses=["10.0.0.1:5"]), ctx
        ),
        lambda ctx: service.GetCounters(pb.GetCountersRequest(), ctx),
        lambda ctx: service.ResetCounters(pb.ResetCountersRequest(), ctx),
    ]
    for call in calls:
        with pytest.raises(_Aborted) as err:
            call(_Context())
        assert err.value.code == code and str(exc) in err.value.details


def test_bad_requests_never_reach_the_backend() -> None:
    b, dataplane = backend()
    service = SwitchAgentService(b)
    for request, message in (
        (pb.InstallJobRequest(wire_job_id=70000, workers=2, slots=4, elements_per_packet=8), "wire_job_id"),
        (pb.InstallJobRequest(wire_job_id=1, workers=0, slots=4, elements_per_packet=8), "workers must be"),
        (
            pb.InstallJobRequest(
                wire_job_id=1, workers=1, slots=4, elements_per_packet=8, worker_addresses=["x"]
            ),
            "worker_addresses[]",
        ),
    ):
        with pytest.raises(_Aborted) as err:
            service.InstallJob(request, _Context())
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details
    with pytest.raises(_Aborted) as err:
        service.SetWorkers(pb.SetWorkersRequest(wire_job_id=1, worker_addresses=["10.0.0.1:0"]), _Context())
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "port 0" in err.value.details
    assert dataplane.jobs == []
    service.InstallJob(
        pb.InstallJobRequest(wire_job_id=1, workers=2, slots=4, elements_per_packet=8), _Context()
    )
    assert service.GetInfo(pb.GetInfoRequest(), _Context()).kind == "python"
    assert service.GetCounters(pb.GetCountersRequest(), _Context()).drops["truncated"] == 0


def _prefix(tmp_path: Path, first_line: str) -> Path:
    """A fake BMv2 install prefix: bin/simple_switch_CLI and lib/python3.X/site-packages."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "lib" / "python3.99" / "site-packages").mkdir(parents=True)
    cli = tmp_path / "bin" / "simple_switch_CLI"
    cli.write_text(first_line + "\n")
    cli.chmod(0o755)
    return cli


def test_simple_switch_cli_runs_with_netaggs_interpreter(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("NETAGG_P4_PREFIX", raising=False)
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    cli = _prefix(tmp_path, "#!/usr/bin/env python3")
    cmd, env = cli_command(str(cli), 9090)
    assert cmd == [sys.executable, str(cli), "--thrift-port", "9090"]
    site = str(tmp_path / "lib" / "python3.99" / "site-packages")
    assert env["PYTHONPATH"].split(":") == [site, "/elsewhere"]


def test_a_wrapper_script_picks_its_own_python(tmp_path: Path) -> None:
    cli = _prefix(tmp_path, "#!/bin/sh")
    cmd, _ = cli_command(str(cli), 9090)
    assert cmd == [str(cli), "--thrift-port", "9090"]


def test_without_thrift_the_error_names_the_extra(tmp_path: Path, monkeypatch) -> None:
    import importlib.util

    cli = _prefix(tmp_path, "#!/usr/bin/python3")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "thrift" else real(name, *a)
    )
    with pytest.raises(Bmv2Error, match=r"pip install 'netagg\[bmv2\]'"):
        cli_command(str(cli), 9090)
    assert isinstance(Bmv2Error("x"), OSError) and isinstance(Bmv2Error("x"), BackendError)


def test_switch_options_say_what_is_missing() -> None:
    from netagg.rpc import Tokens
    from switch.daemon import AgentOptions, Bmv2SwitchOptions, PythonSwitchOptions, Registration

    with pytest.raises(ValueError, match="give --workers for a static job"):
        PythonSwitchOptions()
    with pytest.raises(ValueError, match="--ethernet needs --ip"):
        PythonSwitchOptions(jobs=(job(),), ethernet=("eth0",))
    agent = AgentOptions(("127.0.0.1", 0), Tokens.single("t" * 20), tls_cert=Path("cert.pem"))
    with pytest.raises(ValueError, match="--tls-cert and --tls-key go together"):
        PythonSwitchOptions(agent=agent)
    with pytest.raises(ValueError, match="needs a SwitchAgent"):
        PythonSwitchOptions(jobs=(job(),), register=Registration(("127.0.0.1", 1)))
    with pytest.raises(ValueError, match="needs a SwitchAgent"):
        Bmv2SwitchOptions(
            Path("x.json"), {}, "10.0.0.1", "02:00:00:00:00:01", register=Registration(("h", 1))
        )
