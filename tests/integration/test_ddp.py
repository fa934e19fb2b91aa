"""The DDP hook with real torch.distributed processes: gradients, bucket sizes, fallback."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from netagg.cli.launch import free_port, run_workers
from netagg.protocol import MAX_ELEMENTS, scale_bits
from netagg.verify import allreduce_error_bound
from tests.integration import ddp_workers as dw


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("bucket_cap_mb", [0.01, 0.2, 25.0])
def test_gradients_match_allreduce_hook(switch_factory, world: int, bucket_cap_mb: float) -> None:
    sw = switch_factory(world, elements=MAX_ELEMENTS)  # the default, named for the bound below
    netagg = run_workers(dw.grads, world, world, free_port(), sw.address, bucket_cap_mb, timeout=300)
    gloo = run_workers(dw.grads, world, world, free_port(), None, bucket_cap_mb, timeout=300)
    # Each element is off by at most W * 2**(E-B-1) / W (docs/protocol.md, "Quantization"), where
    # 2**(E-1) <= the largest local gradient magnitude in its block: at most 2**-B * max|local|. Against
    # gloo, whose own float32 sums round too, twice that; the bound itself is checked per bucket below.
    gmax = max(r["local_max"] for r in netagg)
    atol = 2.0 ** (1 - scale_bits(world)) * gmax
    import torch

    for rank in range(world):
        for ours, theirs in zip(netagg[rank]["averaged"], gloo[rank]["averaged"], strict=True):
            torch.testing.assert_close(
                torch.from_numpy(ours), torch.from_numpy(theirs), atol=atol, rtol=2**-20
            )
        stats = netagg[rank]["stats"]
        assert stats["fallbacks"] == stats["gloo_buckets"] == 0
        assert stats["buckets"] == stats["switch_buckets"] > 0
    # With a 10 KB cap each step has several buckets (2 steps, so the rebuilt buckets were used too).
    if bucket_cap_mb == 0.01:
        assert netagg[0]["stats"]["buckets"] >= 4
    # All ranks hold the same averaged gradient.
    for ours, theirs in zip(netagg[0]["averaged"], netagg[-1]["averaged"], strict=True):
        np.testing.assert_array_equal(ours, theirs)
    # Each bucket's mean is within the documented bound of the exact mean, with the block exponent
    # taken from what the ranks sent (netagg.verify), not from the implementation.
    assert netagg[0]["buckets"]
    for key, (_, mean) in netagg[0]["buckets"].items():
        sent = [r["buckets"][key][0] for r in netagg]
        exact = np.mean([s.astype(np.float64) for s in sent], axis=0)
        # the mean's bound is the sum's divided by W (W is a power of two: mean * W is the sum)
        bound = allreduce_error_bound(sent, mean * world, MAX_ELEMENTS) / world
        err = np.abs(mean - exact)
        assert np.all(err <= bound), (key, float((err / bound).max()))
        for r in netagg:
            np.testing.assert_array_equal(r["buckets"][key][1], mean)


def test_gradients_as_bucket_views(switch_factory) -> None:
    """The hook returns an output buffer of its own, not the bucket: DDP copies it into gradients that
    are views of its buckets as well (the second step starts from gradients the hook gave)."""
    sw = switch_factory(2, elements=MAX_ELEMENTS)
    ours = run_workers(dw.grads, 2, 2, free_port(), sw.address, 0.01, 2, True, timeout=300)
    gloo = run_workers(dw.grads, 2, 2, free_port(), None, 0.01, 2, True, timeout=300)
    atol = 2.0 ** (1 - scale_bits(2)) * max(r["local_max"] for r in ours)
    import torch

    for rank in range(2):
        assert ours[rank]["stats"]["switch_buckets"] == ours[rank]["stats"]["buckets"] > 0
        for a, b in zip(ours[rank]["averaged"], gloo[rank]["averaged"], strict=True):
            torch.testing.assert_close(torch.from_numpy(a), torch.from_numpy(b), atol=atol, rtol=2**-20)
    for a, b in zip(ours[0]["averaged"], ours[1]["averaged"], strict=True):
        np.testing.assert_array_equal(a, b)


def test_hook_through_the_controller(tmp_path, switch_factory) -> None:
    from netagg.cli.launch import ControllerProcess
    from netagg.rpc import channel
    from netagg.v1 import control_pb2 as pb
    from netagg.v1 import control_pb2_grpc as pb_grpc

    token = "ddp-controller-token-0123"
    with ControllerProcess(tmp_path / "ctl.db", token=token) as ctl:
        switch_factory(None, controller=ctl.address, token=token)
        with channel(ctl.address, token) as ch:
            spec = pb.JobSpec(name="ddp", workers=2, element_type=pb.ELEMENT_TYPE_FLOAT32)
            job = pb_grpc.ControllerStub(ch).CreateJob(pb.CreateJobRequest(spec=spec))
        state = {"controller": ctl.address, "job": job.job_id, "token": token}
        netagg = run_workers(dw.grads, 2, 2, free_port(), state, 0.2, timeout=300)
    gloo = run_workers(dw.grads, 2, 2, free_port(), None, 0.2, timeout=300)
    atol = 2.0 ** (1 - scale_bits(2)) * max(r["local_max"] for r in netagg)
    import torch

    for rank in range(2):
        stats = netagg[rank]["stats"]
        assert stats["fallbacks"] == stats["gloo_buckets"] == 0 and stats["switch_buckets"] > 0
        for ours, theirs in zip(netagg[rank]["averaged"], gloo[rank]["averaged"], strict=True):
            torch.testing.assert_close(
                torch.from_numpy(ours), torch.from_numpy(theirs), atol=atol, rtol=2**-20
            )


def test_switch_killed_mid_training_falls_back_to_gloo(switch_factory) -> None:
    sw = switch_factory(2)
    out = run_workers(
        dw.survive_switch_death, 2, 2, free_port(), sw.address, sw.pid, "gloo", 2.0, timeout=300
    )
    for r in out:
        assert "error" not in r, r
        assert r["stats"]["fallbacks"] > 0 and r["stats"]["gloo_buckets"] > 0, r
        assert any("made no progress" in cause for cause in r["stats"]["causes"]), r
    assert out[0]["checksum"] == out[1]["checksum"]  # the ranks stayed in step
    import torch

    # A bucket that fell back is gloo's mean, bit for bit; one through the switch is within the
    # documented bound of the exact mean (2**(E-1) <= the largest local gradient, so the bound of
    # W * 2**(E-B-1) / W is at most 2**-B * max|local|, plus 2**-24 relative for the float32 result).
    gmax = max(step["local_max"] for r in out for step in r["steps"])
    for r in out:
        # steps 0-1 through the switch; the switch dies before step 2, whose first bucket times out
        counts = [(s["buckets"], s["gloo_buckets"]) for s in r["steps"]]
        assert [f for _, f in counts] == [0, 0] + [b for b, _ in counts[2:]], counts
        for step in r["steps"]:
            for ours, gloo, exact in zip(step["averaged"], step["gloo"], step["exact"], strict=True):
                if step["gloo_buckets"]:
                    torch.testing.assert_close(torch.from_numpy(ours), torch.from_numpy(gloo), rtol=0, atol=0)
                else:
                    torch.testing.assert_close(
                        torch.from_numpy(ours).double(),
                        torch.from_numpy(exact),
                        atol=2.0 ** -scale_bits(2) * gmax * (1 + 2**-20),
                        rtol=2**-23,
                    )


def test_switch_killed_with_fallback_error_fails_fast(switch_factory) -> None:
    sw = switch_factory(2)
    out = run_workers(
        dw.survive_switch_death, 2, 2, free_port(), sw.address, sw.pid, "error", 2.0, timeout=300
    )
    for r in out:
        # DDP's reducer re-raises the hook's NetAggTimeout as a RuntimeError carrying its message.
        assert "error" in r and "made no progress" in r["error"] and "switch" in r["error"], r
        assert r["seconds"] < 30, r


def test_state_validates_its_arguments() -> None:
    from host_agent.ddp import NetAggState

    with pytest.raises(ValueError, match="HOST:PORT"):
        NetAggState(switch="nowhere", rank=0, world_size=2)
    with pytest.raises(ValueError, match="fallback"):
        NetAggState(switch="127.0.0.1:1", rank=0, world_size=2, fallback="retry")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rank must be"):
        NetAggState(switch="127.0.0.1:1", rank=2, world_size=2)
    with pytest.raises(ValueError, match="not initialized"):
        NetAggState(switch="127.0.0.1:1")
    with pytest.raises(ValueError, match="either switch"):
        NetAggState(switch="127.0.0.1:1", controller="127.0.0.1:2", rank=0, world_size=2)
    with pytest.raises(ValueError, match="controller's job id"):
        NetAggState(controller="127.0.0.1:2", job=3, rank=0, world_size=2)


def test_example_runs_under_torchrun(switch_factory, tmp_path) -> None:
    import json
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "examples" / "train_ddp.py"
    sw = switch_factory(2)
    out = tmp_path / "run.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            str(free_port()),
            str(example),
            "--switch",
            sw.address,
            "--epochs",
            "2",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    run = json.loads(out.read_text())
    assert run["mode"] == "netagg" and run["world_size"] == 2 and run["fallbacks"] == run["gloo_buckets"] == 0
    assert run["netagg"]["switch_buckets"] == run["netagg"]["buckets"] > 0
    assert (
        run["traffic_per_worker"]["bytes_sent"] > run["parameters"] * 4 * run["steps"]
    )  # every step went through
    assert run["test_accuracy"] > 0.8
