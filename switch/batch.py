"""The dataplane's batch path: a GRO run of first contributions to distinct slots of one job, done with
numpy over the whole run. Anything else (another job, a repeat, a stale or mismatched use, an OFFER)
makes :func:`contribute_batch` return None before changing anything, and the run goes through the
one-datagram path (:meth:`switch.core.Dataplane.handle`); a property test checks that both paths give
the same outputs, counters and state."""

from __future__ import annotations

from collections import Counter

import numpy as np

from netagg.protocol import HEADER_SIZE, SET_BIT, VERSION, Flag, MsgType, record_dtype
from switch.jobs import SEQ_NONE, Address, JobState, Output, Segments

__all__ = ["contribute_batch"]

_WORKER_ALL = 0xFFFF
_RETX, _OFFER = int(Flag.RETX), int(Flag.OFFER)
_RESULT, _CONTRIB = int(MsgType.RESULT), int(MsgType.CONTRIB)


def contribute_batch(
    jobs: dict[int, JobState], counters: Counter[str], view: memoryview, seg: int, k: int, src: Address
) -> list[Output] | None:
    """The vectorized common case, or None (nothing changed) if the batch is not that case."""
    count = (seg - HEADER_SIZE) // 4
    if seg < HEADER_SIZE or HEADER_SIZE + 4 * count != seg:
        return None
    rec = np.frombuffer(view, record_dtype(count), k)
    h = rec["h"]
    job_ids = h["job"]
    job = jobs.get(int(job_ids[0]))
    if job is None or not job.joined or count > job.cfg.elements or job.cfg.parent is not None:
        return None
    cfg = job.cfg
    slot_field = h["slot"].astype(np.int64)
    seq = h["seq"].astype(np.int64)
    setbit = slot_field >> 15
    i = (slot_field & (SET_BIT - 1)) - cfg.slot_base
    worker = h["worker"].astype(np.int64)
    if not (
        (h["version"] == VERSION).all()
        and (h["type"] == _CONTRIB).all()
        and (h["op"] == 0).all()  # allreduce-sum: other collectives take the one-datagram path
        and (h["count"] == count).all()
        and (job_ids == cfg.job_id).all()
        and (h["epoch"] == job.epoch).all()
        and (worker < cfg.workers).all()
        and (i >= 0).all()
        and (i < cfg.slots).all()
        and (setbit == (seq & 1)).all()
    ):
        return None
    if any(job.addrs[w] != src for w in set(worker.tolist())):
        return None
    keys = 2 * i + setbit
    key_list = keys.tolist()
    if len(set(key_list)) != k:
        return None
    cur = np.array([job.seq[x] for x in key_list], dtype=np.int64)
    diff = (seq - cur) & 0xFFFFFFFF
    newer = (cur == SEQ_NONE) | ((diff != 0) & (diff < 0x80000000))
    same = ~newer & (diff == 0)
    bitmap = np.array([job.bitmap[x] for x in key_list], dtype=np.int64)
    if any(job.op[x] for x, s in zip(key_list, same.tolist(), strict=True) if s):
        return None  # an open use of another collective: op_mismatch, counted by the one-packet path
    nelem = np.array([job.nelem[x] for x in key_list], dtype=np.int64)
    bit = np.left_shift(1, worker)
    if not (newer | (same & (nelem == count) & ((bitmap & bit) == 0))).all():
        return None  # stale, mismatched or repeated packets: the one-packet path counts them
    # From here on this is exactly what handle() would do for each packet in turn.
    bitmap[newer] = 0
    expmax = np.array([job.expmax[x] for x in key_list], dtype=np.int64)
    expmax[newer] = 0
    payload = rec["p"]
    first = bitmap == 0
    acc = job.out_payload_all
    if first.any():
        acc[keys[first], :count] = payload[first]
    if not first.all():
        rest = keys[~first]
        acc[rest, :count] += payload[~first]
    bitmap |= bit
    expmax = np.maximum(expmax, h["exp"])
    flags = h["flags"]
    for x, s, b, e in zip(key_list, seq.tolist(), bitmap.tolist(), expmax.tolist(), strict=True):
        job.seq[x] = s
        job.bitmap[x] = b
        job.nelem[x] = count
        job.expmax[x] = e
        job.ready[x] = b == job.full
        job.op[x] = 0
        job.data[x] = True
    c = counters
    jc = job.counters
    c["packets_in"] += k
    c["bytes_in"] += k * seg
    c["contributions"] += k
    jc["packets_in"] += k
    jc["bytes_in"] += k * seg
    jc["contributions"] += k
    if retx := int(np.count_nonzero(flags & _RETX)):
        c["retransmissions"] += retx
        jc["retransmissions"] += retx
    done = bitmap == job.full
    if not done.any():
        return []
    dk = keys[done]
    res = np.zeros(int(dk.size), dtype=record_dtype(count))
    rh = res["h"]
    rh["version"] = VERSION
    rh["type"] = _RESULT
    rh["epoch"] = job.epoch
    rh["job"] = cfg.job_id
    rh["worker"] = _WORKER_ALL
    rh["slot"] = slot_field[done]
    rh["count"] = count
    rh["seq"] = seq[done]
    rh["exp"] = expmax[done]
    rh["bitmap"] = job.full
    res["p"] = acc[dk, :count]
    raw = res.view(np.uint8).reshape(dk.size, seg)
    job.out_all[dk, :seg] = raw
    c["completions"] += int(dk.size)
    jc["completions"] += int(dk.size)
    return [(Segments(raw.reshape(-1).data, seg), job.result_dests)]
