"""The DDP hook through switch failures, with real torch processes and real switches: a switch SIGKILLed
mid-training and restarted on the same address, and a script re-run on the same controller job."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

from netagg.cli.launch import SwitchProcess, WorkerFailed, free_port, run_workers
from tests.integration import ddp_workers as dw


def _restart_when_killed(
    sw: SwitchProcess, start: Any, marker: Path, done: threading.Event, started: list[SwitchProcess]
) -> None:
    """Once ``sw`` has died, start a switch on the same address and write its address to ``marker``."""
    while not done.is_set():
        if not sw.alive():
            started.append(start(sw.address))
            marker.write_text(started[-1].address)
            return
        time.sleep(0.02)


@pytest.mark.parametrize("world", [2])
def test_switch_killed_and_restarted_mid_training(switch_factory, tmp_path: Path, world: int) -> None:
    """Trains as well as gloo, and buckets go through the switch again after the restart.

    Without recovery in the worker the calls in flight when the switch died time out, those buckets and
    the next ones go through gloo, and a new worker joins the restarted switch after the back-off. With
    it, the workers rejoin by themselves and no bucket needs gloo. Either way summary() must say what
    went where, and the logs must say it too."""
    sw = switch_factory(world)
    marker = tmp_path / "restarted"
    done, started = threading.Event(), []  # type: ignore[var-annotated]
    watcher = threading.Thread(
        target=_restart_when_killed,
        args=(sw, lambda address: switch_factory(world, listen=address), marker, done, started),
    )
    watcher.start()
    kill_step, epochs = 30, 12
    try:
        ours = run_workers(
            dw.train_through_restart,
            world,
            world,
            free_port(),
            sw.address,
            sw.pid,
            str(marker),
            kill_step,
            epochs,
            timeout=600,
        )
    finally:
        done.set()
        watcher.join()
    gloo = run_workers(
        dw.train_through_restart, world, world, free_port(), None, 0, "", 0, epochs, timeout=600
    )
    assert started and started[0].address == sw.address, "the switch was not killed and restarted"
    new_switch = started[0].stop() or {}
    for r in ours:
        # how the run went (pytest -s shows it)
        print(f"summary: {r['summary']}\nlog: {r['log']}\naccuracy {r['accuracy']}, loss {r['loss']}")
    print(f"gloo: accuracy {gloo[0]['accuracy']}, loss {gloo[0]['loss']}")
    # Every rank holds the same parameters, bit for bit: each bucket's mean was the same everywhere.
    assert len({r["checksum"] for r in ours}) == 1, [r["checksum"] for r in ours]
    # Training ended as with gloo: the difference is the quantization of the gradients (and whatever
    # gloo did for the buckets that fell back), which the existing DDP tests bound per bucket.
    assert ours[0]["accuracy"] > 0.85 and gloo[0]["accuracy"] > 0.85
    (acc, loss), (gloo_acc, gloo_loss) = ((r[0]["accuracy"], r[0]["loss"]) for r in (ours, gloo))
    assert abs(acc - gloo_acc) <= 0.03, (acc, gloo_acc)
    assert abs(loss - gloo_loss) <= 0.05 + 0.1 * gloo_loss, (loss, gloo_loss)
    for r in ours:
        s, steps, log = r["summary"], r["steps"], r["log"]
        assert (
            s["buckets"]
            == s["switch_buckets"] + s["gloo_buckets"]
            == sum(st["switch_buckets"] + st["gloo_buckets"] for st in steps)
        )
        # Steps before the kill went through the switch; so did the last ones, after the restart.
        assert all(st["gloo_buckets"] == 0 and st["switch_buckets"] > 0 for st in steps[:kill_step])
        assert all(st["gloo_buckets"] == 0 for st in steps[-10:]), steps[-10:]
        assert sum(st["switch_buckets"] for st in steps[kill_step + 2 :]) > 0
        assert not s["falling_back"]
        errors = [m for level, m in log if level >= 40]
        returned = [m for level, m in log if level == 20 and "serves rank" in m]
        if s["gloo_buckets"]:  # the fallback carried the run: it said so, once, with the cause
            assert s["fallbacks"] >= 1 and sum(s["causes"].values()) == s["fallbacks"]
            assert len(errors) == 1 and "cannot serve" in errors[0], log
            assert s["returns"] >= 1 and len(returned) == s["returns"], log
        else:  # the workers recovered by themselves
            assert s["fallbacks"] == s["returns"] == 0 and s["causes"] == {} and errors == [], log
        summary_line = log[-1]
        assert "buckets" in summary_line[1] and summary_line[0] == (30 if s["gloo_buckets"] else 20)
    assert new_switch.get("counters", {}).get("completions", 0) > 0, new_switch


def test_rerun_on_the_same_controller_job_needs_replace(tmp_path, switch_factory) -> None:
    """A script run twice on one controller job: the second run without replace=True fails at the first
    bucket with the controller's ALREADY_EXISTS (it does not train on gloo); with it, it takes the ranks
    over and every bucket goes through the switch."""
    from netagg.cli.launch import ControllerProcess
    from netagg.rpc import channel
    from netagg.v1 import control_pb2 as pb
    from netagg.v1 import control_pb2_grpc as pb_grpc

    token = "ddp-rerun-token-0123456"
    with ControllerProcess(tmp_path / "ctl.db", token=token) as ctl:
        switch_factory(None, controller=ctl.address, token=token)
        with channel(ctl.address, token) as ch:
            spec = pb.JobSpec(name="ddp", workers=2, element_type=pb.ELEMENT_TYPE_FLOAT32)
            job = pb_grpc.ControllerStub(ch).CreateJob(pb.CreateJobRequest(spec=spec))
        state = {"controller": ctl.address, "job": job.job_id, "token": token}
        first = run_workers(dw.grads, 2, 2, free_port(), state, 0.2, timeout=300)
        assert all(r["stats"]["switch_buckets"] == r["stats"]["buckets"] > 0 for r in first)
        with pytest.raises(WorkerFailed) as failed:
            run_workers(dw.grads, 2, 2, free_port(), state, 0.2, timeout=300)
        assert "ALREADY_EXISTS" in str(failed.value) and "replace" in str(failed.value)
        again = run_workers(dw.grads, 2, 2, free_port(), {**state, "replace": True}, 0.2, timeout=300)
    for r in again:
        s = r["stats"]
        assert s["switch_buckets"] == s["buckets"] > 0 and s["gloo_buckets"] == s["fallbacks"] == 0
