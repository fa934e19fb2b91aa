"""The DDP hook through switch failures, with real torch processes and real switches: a switch SIGKILLed
mid-training and restarted on the same address, a bucket's result lost to one rank only, and a script
re-run on the same controller job."""

from __future__ import annotations

import selectors
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

from host_agent.ddp import RETRY_JOIN_TIMEOUT
from netagg.cli.launch import SwitchProcess, WorkerFailed, free_port, run_workers
from netagg.protocol import HEADER, MAX_ELEMENTS, MsgType, parse_address, scale_bits
from tests.integration import ddp_workers as dw


def _restart_when_killed(
    sw: SwitchProcess,
    start: Any,
    marker: Path,
    done: threading.Event,
    started: list[SwitchProcess],
    delay: float,
) -> None:
    """Once ``sw`` has died, wait ``delay`` seconds, start a switch on the same address and write its
    address to ``marker``."""
    while not done.is_set():
        if not sw.alive():
            if done.wait(delay):
                return
            started.append(start(sw.address))
            marker.write_text(started[-1].address)
            return
        time.sleep(0.02)


@pytest.mark.parametrize(
    ("world", "delay"), [(2, 0.0), (2, 12.0)], ids=["restart", "slow-restart"]
)  # world 4 passes too (about a minute on 2 cores)
def test_switch_killed_and_restarted_mid_training(
    switch_factory, tmp_path: Path, world: int, delay: float
) -> None:
    """Trains as well as gloo, and buckets go through the switch again after the restart.

    A switch back within the workers' timeout (5 s): they rejoin by themselves and finish their calls;
    no bucket needs gloo. (Before the worker could rejoin, the calls in flight timed out, those buckets
    and the next ones went through gloo, and a new worker joined the restarted switch after the
    back-off: the test takes either.) A switch away for longer (``delay`` 12 s, more than a call's
    timeout and a try's join together): the calls time out and the fallback carries the run until a
    try after the back-off finds the switch back. Either way
    summary() must say what went where, and the logs must say it too."""
    sw = switch_factory(world)
    marker = tmp_path / "restarted"
    done, started = threading.Event(), []  # type: ignore[var-annotated]
    watcher = threading.Thread(
        target=_restart_when_killed,
        args=(sw, lambda address: switch_factory(world, listen=address), marker, done, started, delay),
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
        if s["fallbacks"]:  # the fallback carried the run: it said so, once, with the cause
            assert sum(s["causes"].values()) == s["fallbacks"]
            assert len(errors) == 1 and "cannot serve" in errors[0], log
            assert s["returns"] >= 1 and len(returned) == s["returns"], log
        else:  # the workers recovered by themselves
            assert s["gloo_buckets"] == s["returns"] == 0 and s["causes"] == {} and errors == [], log
        summary_line = log[-1]
        assert "buckets" in summary_line[1] and summary_line[0] == (30 if s["gloo_buckets"] else 20)
    assert new_switch.get("counters", {}).get("completions", 0) > 0, new_switch
    if delay > 5.0 + RETRY_JOIN_TIMEOUT:  # away longer than a call and a try: the fallback carried it
        for r in ours:
            s = r["summary"]
            assert s["gloo_buckets"] > 0 and s["fallbacks"] >= 1 and s["returns"] >= 1, s


def test_rerun_on_the_same_controller_job_needs_replace(tmp_path, switch_factory) -> None:
    """A script re-run on a controller job whose ranks are still joined (the last run died without
    leaving it): without replace=True it fails at the first bucket with the controller's ALREADY_EXISTS
    (it does not train on gloo); with it, it takes the ranks over and every bucket goes through the
    switch."""
    from netagg.cli.launch import ControllerProcess
    from netagg.rpc import channel
    from netagg.v1 import control_pb2 as pb
    from netagg.v1 import control_pb2_grpc as pb_grpc

    token = "ddp-rerun-token-0123456"
    with ControllerProcess(tmp_path / "ctl.db", token=token) as ctl:
        switch_factory(None, controller=ctl.address, token=token)
        with channel(ctl.address, token) as ch:
            stub = pb_grpc.ControllerStub(ch)
            spec = pb.JobSpec(name="ddp", workers=2, element_type=pb.ELEMENT_TYPE_FLOAT32)
            job = stub.CreateJob(pb.CreateJobRequest(spec=spec))
            for rank in range(2):  # the ranks of a run that was killed: joined, never left
                stub.JoinJob(pb.JoinJobRequest(job_id=job.job_id, rank=rank, address=f"127.0.0.1:{9 + rank}"))
        state = {"controller": ctl.address, "job": job.job_id, "token": token}
        with pytest.raises(WorkerFailed) as failed:
            run_workers(dw.grads, 2, 2, free_port(), state, 0.2, timeout=300)
        assert "ALREADY_EXISTS" in str(failed.value) and "replace" in str(failed.value)
        again = run_workers(dw.grads, 2, 2, free_port(), {**state, "replace": True}, 0.2, timeout=300)
    for r in again:
        s = r["stats"]
        assert s["switch_buckets"] == s["buckets"] > 0 and s["gloo_buckets"] == s["fallbacks"] == 0


class ResultDropper:
    """A UDP relay between one worker and the switch, in this process. It forwards both ways, except
    that from the ``after``-th data RESULT it has forwarded to the worker on, for ``seconds``, it drops
    the switch's data RESULTs (count > 0) to the worker: the worker's contributions still arrive, so
    the others complete the bucket the worker cannot (the switch served one rank and not another)."""

    def __init__(self, switch: str, after: int, seconds: float) -> None:
        host, port = parse_address(switch)
        self.down = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.down.bind(("127.0.0.1", 0))
        self.up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.up.connect((host, port))
        self.address = f"127.0.0.1:{self.down.getsockname()[1]}"
        self.after, self.seconds = after, seconds
        self.forwarded = self.dropped = 0
        self._client: tuple[str, int] | None = None
        self._until: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.down, selectors.EVENT_READ)
        sel.register(self.up, selectors.EVENT_READ)
        while not self._stop.is_set():
            for key, _ in sel.select(0.05):
                try:
                    if key.fileobj is self.down:
                        data, self._client = self.down.recvfrom(65536)
                        self.up.send(data)
                        continue
                    data = self.up.recv(65536)
                except OSError:  # ICMP from a port nobody listens on
                    continue
                header = HEADER.unpack_from(data)
                if header[1] == MsgType.RESULT and header[7] > 0:
                    if self._until is None and self.forwarded >= self.after:
                        self._until = time.monotonic() + self.seconds
                    if self._until is not None and time.monotonic() < self._until:
                        self.dropped += 1
                        continue
                    self.forwarded += 1
                if self._client is not None:
                    self.down.sendto(data, self._client)
        sel.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.down.close()
        self.up.close()


def test_a_result_lost_to_one_rank_is_passed_on_by_another(switch_factory) -> None:
    """The switch's results of a bucket reach rank 0 but not rank 1 (for a few seconds). Rank 1's call
    fails; rank 0 finished the bucket and waits for the next one, whose call then fails too. The ranks
    agree on where each is, rank 0 passes the bucket's result on to rank 1, and every rank ends every
    step with the same gradients, within the quantization bound of the exact mean."""
    sw = switch_factory(2, elements=MAX_ELEMENTS)
    relay = ResultDropper(sw.address, after=40, seconds=4.0)
    try:
        out = run_workers(dw.split_results, 2, 2, free_port(), [sw.address, relay.address], 16, timeout=300)
    finally:
        relay.close()
    assert relay.dropped > 0
    first, second = (r["summary"] for r in out)
    print(f"rank 0: {first}\nrank 1: {second}")  # how it went (pytest -s shows it)
    assert second["peer_buckets"] >= 1, second
    assert first["peer_buckets"] == 0 and first["fallbacks"] >= 1, first
    assert first["buckets"] == second["buckets"]
    for s in (first, second):
        assert s["buckets"] == s["switch_buckets"] + s["gloo_buckets"]
    gmax = max(step["local_max"] for r in out for step in r["steps"])
    for a, b in zip(out[0]["steps"], out[1]["steps"], strict=True):
        for ga, gb, exact in zip(a["averaged"], b["averaged"], a["exact"], strict=True):
            np.testing.assert_array_equal(ga, gb)  # the same bits at every rank
            bound = 2.0 ** -scale_bits(2) * gmax * (1 + 2**-20) + 2**-23 * np.abs(exact)
            assert np.all(np.abs(ga - exact) <= bound)


def test_a_static_job_with_a_key(switch_factory, tmp_path: Path) -> None:
    """key= reaches the switch: with the job's key every bucket goes through it; with another key the
    first bucket raises the switch's bad_key refusal (a configuration error, never fallen back from)."""
    key_file = tmp_path / "job.key"
    key_file.write_text("00c0ffee00c0ffee\n")
    sw = switch_factory(2, extra=["--key-file", str(key_file)])
    good = run_workers(dw.grads, 2, 2, free_port(), {"switch": sw.address, "key": "00c0ffee00c0ffee"}, 0.2)
    for r in good:
        assert r["stats"]["switch_buckets"] == r["stats"]["buckets"] > 0 and r["stats"]["fallbacks"] == 0
    with pytest.raises(WorkerFailed) as failed:
        run_workers(dw.grads, 2, 2, free_port(), {"switch": sw.address, "key": 0xBAD}, 0.2, timeout=300)
    assert "bad_key" in str(failed.value)
