"""The torch.distributed backend "netagg" with real processes: a real ``netagg switch`` (or controller),
spawned torch ranks that ``import host_agent`` and ``init_process_group("netagg")``, results against
numpy, training against the same run over gloo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from netagg.cli.launch import ControllerProcess, free_port, run_workers
from netagg.verify import allreduce_error_bound
from tests.integration import torch_workers as tw

ROOT = Path(__file__).resolve().parents[2]


def sum_bound(inputs: list[np.ndarray], result: np.ndarray, elements: int, dtype: str) -> np.ndarray:
    return allreduce_error_bound(inputs, result, elements, dtype)  # with the dtype's final rounding


def shard_elements(shard: int, elements: int) -> int:
    """The words per chunk of a shard (docs/protocol.md, "Shards"): N' = ceil(s / ceil(s / N))."""
    k = -(-shard // elements)
    return -(-shard // k)


@pytest.mark.parametrize("shard", [1001, 20011])  # one chunk per shard; two (N = 16,370), both odd
def test_collectives_against_numpy(switch_factory, shard: int) -> None:
    world = 4
    sw = switch_factory(world)  # `netagg switch --listen 127.0.0.1:0 --workers 4`: nothing else
    env = {"NETAGG_SWITCH": sw.address}
    out = run_workers(tw.collectives, world, world, free_port(), env, shard, timeout=300)
    elements = out[0]["elements"]
    for dtype in tw.DTYPES:
        xs = [tw.as_numpy(tw.rank_input(r, world * shard, dtype)) for r in range(world)]
        exact = np.sum([x.astype(np.float64) for x in xs], axis=0)
        for r, o in enumerate(out):
            got = o[dtype]
            mine = slice(r * shard, (r + 1) * shard)
            # max, min, gathers and broadcasts: bit-exact in every dtype
            np.testing.assert_array_equal(got["max"], np.max(xs, axis=0))
            np.testing.assert_array_equal(got["min"], np.min(xs, axis=0))
            np.testing.assert_array_equal(
                got["ag"], np.concatenate([x[i * shard : (i + 1) * shard] for i, x in enumerate(xs)])
            )
            np.testing.assert_array_equal(got["ag_list"], got["ag"])
            np.testing.assert_array_equal(got["bc"], xs[-1])
            assert got["async_same_tensor"]
            if dtype == "int32":
                wrapped = np.asarray(np.sum(xs, axis=0, dtype=np.int32))
                for key in ("sum", "async_sum"):
                    np.testing.assert_array_equal(got[key], wrapped)
                np.testing.assert_array_equal(got["rs"], wrapped[mine])
                np.testing.assert_array_equal(got["rs_list"], wrapped[mine])
                continue
            bound = sum_bound(xs, got["sum"], elements, dtype)
            assert np.all(np.abs(got["sum"] - exact) <= bound), (dtype, "sum")
            np.testing.assert_array_equal(got["async_sum"], got["sum"])
            # AVG: the mean, whose bound is the sum's / W (W = 4: the division is exact)
            avg_bound = sum_bound(xs, got["avg"] * world, elements, dtype) / world
            assert np.all(np.abs(got["avg"] - exact / world) <= avg_bound), (dtype, "avg")
            # reduce-scatter: this rank's shard of the sum, in chunks of N' (never straddling shards)
            n = shard_elements(shard, elements)
            rs_bound = sum_bound([x[mine] for x in xs], got["rs"], n, dtype)
            assert np.all(np.abs(got["rs"] - exact[mine]) <= rs_bound), (dtype, "rs")
            np.testing.assert_array_equal(got["rs_list"], got["rs"])
        for o in out[1:]:  # every rank holds the same sums, bit for bit
            np.testing.assert_array_equal(o[dtype]["sum"], out[0][dtype]["sum"])
    # Traffic, per rank (docs/protocol.md, "Traffic"): a reduce-scatter of S bytes on the wire (int32
    # lanes: 4 bytes per element, whatever the dtype) sends S and receives about S/W; an all-gather of a
    # shard of S/W bytes (carried as they are) sends S/W and receives S; plus headers, and a datagram
    # more each way for each retransmission (a loaded machine has some).
    for o in out:
        for dtype in tw.DTYPES:
            wire = 4 * world * shard
            tensor = world * shard * (2 if dtype in ("bfloat16", "float16") else 4)
            rs, ag = o[dtype]["rs_traffic"], o[dtype]["ag_traffic"]
            for t in (rs, ag):
                t["slack"] = 4096 + t["retransmissions"] * (24 + 4 * elements)
            assert wire <= rs["bytes_sent"] < 1.05 * wire + rs["slack"], (dtype, rs)
            assert wire / world <= rs["bytes_received"] < 1.05 * wire / world + rs["slack"], (dtype, rs)
            assert tensor / world <= ag["bytes_sent"] < 1.05 * tensor / world + ag["slack"], (dtype, ag)
            assert tensor <= ag["bytes_received"] < 1.05 * tensor + ag["slack"], (dtype, ag)
        stats = o["stats"]
        assert stats["switch"] and not stats["fallbacks"], stats
        assert stats["switch_ops"]["reduce_scatter_single"] == stats["switch_ops"]["all_gather_single"] == 4
        assert stats["switch_ops"]["barrier"] == stats["switch_ops"]["broadcast"] == 4
    # The switch's own counters: everything the ranks sent reached it, and uses completed.
    counters = sw.stop()["counters"]
    sent = sum(o["stats"]["traffic"]["bytes_sent"] for o in out)
    assert counters["completions"] > 0 and counters["bytes_in"] >= 0.99 * sent, (counters, sent)


def test_fallbacks_through_gloo_are_counted(switch_factory) -> None:
    world = 2
    sw = switch_factory(world)
    out = run_workers(tw.fallbacks, world, world, free_port(), {"NETAGG_SWITCH": sw.address}, timeout=300)
    for r, o in enumerate(out):
        np.testing.assert_array_equal(o["all_to_all"], [10 * i + r for i in range(world)])
        np.testing.assert_array_equal(o["product"], np.full(5, 2.0 * 3.0))
        np.testing.assert_allclose(o["float64_sum"], np.full(5, 0.1 + 0.2), rtol=1e-15)
        np.testing.assert_array_equal(o["after"], np.full(4, world))
        stats = o["stats"]
        expected = {"all_to_all_single": 1, "allreduce": 2, "gather": 1, "send" if r == 0 else "recv": 1}
        assert stats["fallbacks"] == expected, stats
        assert stats["fallback_reasons"]["allreduce"] == "reduction PRODUCT"
        assert stats["switch_ops"]["allreduce"] >= 1
        ones, sub = o["subgroup"]
        np.testing.assert_array_equal(ones, np.full(3, world))
        assert not sub["switch"] and sub["fallbacks"] == {"allreduce": 1}, sub
        assert sub["fallback_reasons"] == {"allreduce": "subgroup"}
    np.testing.assert_array_equal(out[1]["recv"], [7.0, 7.0, 7.0])
    np.testing.assert_array_equal(out[0]["gather"], [0.0, 0.0, 1.0, 1.0])


def test_views_coalescing_and_device_mesh(switch_factory) -> None:
    world = 2
    sw = switch_factory(world)
    out = run_workers(tw.odd_shapes, world, world, free_port(), {"NETAGG_SWITCH": sw.address}, timeout=300)
    grid = np.arange(12, dtype=np.float32).reshape(3, 4)
    for r, o in enumerate(out):
        expected = grid * (r + 1)
        expected[:, 1] = grid[:, 1] * world  # only the column, reduced by max
        np.testing.assert_array_equal(o["column"], expected)
        np.testing.assert_array_equal(o["transposed"], np.ones((3, 4)))
        a, b = o["coalesced_gather"]
        np.testing.assert_array_equal(a, [0, 0, 1, 1])
        np.testing.assert_array_equal(b, [10, 10, 10, 11, 11, 11])
        a, b = o["coalesced_rs"]
        np.testing.assert_array_equal(a, 2 * np.arange(2.0 * r, 2.0 * r + 2) + 1)  # ranks 0 and 1 add 0, 1
        np.testing.assert_array_equal(b, 2 * np.arange(4.0 * r, 4.0 * r + 4))
        name, ours = o["mesh_group"]
        assert name == ours  # the mesh uses the default group, by the name c10d gave it
        stats = o["stats"]
        assert not stats["fallbacks"], stats
        assert stats["switch_ops"]["all_gather_single_coalesced"] == 1
        assert stats["switch_ops"]["reduce_scatter_single_coalesced"] == 1


@pytest.mark.parametrize("kind", ["ddp", "fsdp2", "fsdp1", "zero"])
def test_training_matches_gloo(switch_factory, kind: str) -> None:
    world, steps = 2, 6
    sw = switch_factory(world)
    ours = run_workers(
        tw.train, world, world, free_port(), {"NETAGG_SWITCH": sw.address}, kind, steps, timeout=300
    )
    gloo = run_workers(tw.train, world, world, free_port(), None, kind, steps, timeout=300)
    for o, g in zip(ours, gloo, strict=True):
        # close, not equal: gradients are summed with quantization (relative error ~2**-28 here)
        np.testing.assert_allclose(o["losses"], g["losses"], rtol=1e-5)
        assert o["losses"][-1] < 0.95 * o["losses"][0]  # it trains
        stats = o["stats"]
        assert not stats["fallbacks"], stats
        assert stats["traffic"]["bytes_sent"] > 0
        if kind == "fsdp2":
            assert stats["switch_ops"]["reduce_scatter_single"] >= steps
            assert stats["switch_ops"]["all_gather_single"] >= steps
        elif kind == "fsdp1":
            assert stats["switch_ops"]["reduce_scatter_single"] >= steps
            assert stats["switch_ops"]["allgather"] >= 1
        else:
            assert stats["switch_ops"]["allreduce"] >= steps
            assert stats["switch_ops"]["broadcast"] >= 1  # DDP's initial parameter sync
    counters = sw.stop()["counters"]
    assert counters["completions"] > 0 and not any(sw.stats["drops"].values()), sw.stats


def test_a_failed_collective_raises_from_wait(switch_factory) -> None:
    world = 2
    sw = switch_factory(world)
    env = {"NETAGG_SWITCH": sw.address, "NETAGG_TIMEOUT": "1"}
    out = run_workers(tw.switch_dies, world, world, free_port(), env, sw.pid, timeout=300)
    for o in out:
        np.testing.assert_array_equal(o["first"], np.full(8, 2.0))
        first, second = o["errors"]
        assert "made no progress" in first and "switch" in first, first  # the worker's NetAggTimeout
        assert "unusable" in second, second  # the worker stays broken: later collectives fail at once
        assert o["seconds"] < 15, o


def test_through_the_controller(tmp_path, switch_factory) -> None:
    from netagg.rpc import channel
    from netagg.v1 import control_pb2 as pb
    from netagg.v1 import control_pb2_grpc as pb_grpc

    token = "torch-backend-token-0123"
    with ControllerProcess(tmp_path / "ctl.db", token=token) as ctl:
        switch_factory(None, controller=ctl.address, token=token)
        with channel(ctl.address, token) as ch:
            spec = pb.JobSpec(name="torch", workers=2, element_type=pb.ELEMENT_TYPE_FLOAT32)
            job = pb_grpc.ControllerStub(ch).CreateJob(pb.CreateJobRequest(spec=spec))
        env = {"NETAGG_CONTROLLER": ctl.address, "NETAGG_JOB": job.job_id, "NETAGG_TOKEN": token}
        out = run_workers(tw.train, 2, 2, free_port(), env, "ddp", 2, timeout=300)
    for o in out:
        assert job.job_id in o["stats"]["where"] and o["stats"]["switch"]
        assert o["stats"]["switch_ops"]["allreduce"] >= 2 and not o["stats"]["fallbacks"]


def test_under_torchrun(switch_factory, tmp_path) -> None:
    sw = switch_factory(2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NETAGG_")}
    env.update(NETAGG_SWITCH=sw.address, PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    script = Path(__file__).with_name("torchrun_body.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    cmd += ["--master-port", str(free_port()), str(script), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["sum"] == [3.0] * 8 and got["gathered"] == [0, 1]
        assert got["backend"] == "netagg" and not got["stats"]["fallbacks"]
        assert got["stats"]["switch_ops"] == {"allreduce": 1, "all_gather_single": 1}


def test_env_errors_are_clear() -> None:
    cases = {
        "NETAGG_SWITCH=HOST:PORT": {},
        "only one of NETAGG_SWITCH": {"NETAGG_SWITCH": "127.0.0.1:1", "NETAGG_CONTROLLER": "127.0.0.1:2"},
        "controller's job id": {"NETAGG_CONTROLLER": "127.0.0.1:2", "NETAGG_JOB": "3"},
    }
    (messages,) = run_workers(tw.env_errors, 1, list(cases.values()), timeout=120)
    for expected, msg in zip(cases, messages, strict=True):
        assert "ValueError" in msg and expected in msg, msg


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("NETAGG_")}
    full.update(env)
    full["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(ROOT)) if p)
    return subprocess.run(
        [sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=120, check=False
    )


def test_import_host_agent_registers_before_or_after_torch() -> None:
    first = _python(
        "import sys, host_agent; assert 'torch' not in sys.modules, 'import host_agent imported torch'\n"
        "import torch.distributed as dist; print('netagg' in dist.Backend.backend_list)",
        TORCH_DEVICE_BACKEND_AUTOLOAD="0",
    )
    after = _python(
        "import torch.distributed as dist, host_agent; print('netagg' in dist.Backend.backend_list)",
        TORCH_DEVICE_BACKEND_AUTOLOAD="0",
    )
    for proc in (first, after):
        assert proc.returncode == 0 and proc.stdout.strip() == "True", proc.stderr[-2000:]


def test_torch_entry_point_registers_without_import(tmp_path) -> None:
    """torch >= 2.5 calls every ``torch.backends`` entry point during ``import torch``: the one in
    pyproject.toml (installed as the package's metadata; made here by hand) registers the backend."""
    points = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["torch.backends"]
    dist_info = tmp_path / "netagg_probe-0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: netagg-probe\nVersion: 0\n")
    lines = "".join(f"{name} = {target}\n" for name, target in points.items())
    (dist_info / "entry_points.txt").write_text(f"[torch.backends]\n{lines}")
    proc = _python(
        "import sys, torch.distributed as dist; print('netagg' in dist.Backend.backend_list, "
        "'host_agent' in sys.modules)",
        PYTHONPATH=str(tmp_path),
    )
    assert proc.returncode == 0 and proc.stdout.split() == ["True", "True"], proc.stdout + proc.stderr[-2000:]
    off = _python(
        "import sys, torch.distributed as dist; print('netagg' in dist.Backend.backend_list)",
        PYTHONPATH=str(tmp_path),
        TORCH_DEVICE_BACKEND_AUTOLOAD="0",
    )
    assert off.returncode == 0 and off.stdout.strip() == "False", off.stdout + off.stderr[-2000:]
