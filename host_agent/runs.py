"""The per-run engine: the worker's side of one call for small packets, which travel in runs (UDP GSO
out, GRO in); every step works on arrays of slots with numpy. The schedule, the acceptance rule and
the recovery are :class:`host_agent.engine.Engine`'s, as for the one-datagram engine."""

from __future__ import annotations

from typing import Any

import numpy as np

from host_agent.engine import _FINAL, _JOIN_ACK, _PENDING, _REFUSE, _RESULT, _RETX, Engine, Send
from host_agent.schedule import ALLREDUCE, Collective
from host_agent.session import Session
from netagg.protocol import EXP_NONE, HEADER_SIZE, SET_BIT, VERSION, MsgType, record_dtype
from netagg.quantize import chunk_exponents, dequantize, quantize

__all__ = ["RunEngine"]


class RunEngine(Engine):
    """Runs of small packets (UDP GSO out, GRO in): every step works on arrays of slots."""

    batched = True

    def __init__(
        self,
        session: Session,
        flat: np.ndarray,
        out: np.ndarray,
        factor: float,
        now: float,
        call: Collective = ALLREDUCE,
    ) -> None:
        super().__init__(session, flat, out, factor, now, call)
        s, p = self.schedule, self.params
        w, n = s.window, s.elements
        self.slots = np.arange(w, dtype=np.int64)
        self.nuses = np.array(s.uses(), dtype=np.int64)
        self.flat2d = flat[: s.nfull * n].reshape(s.nfull, n)
        self.out2d = out[: s.nfull * n].reshape(s.nfull, n)
        self.exps = chunk_exponents(flat, n) if self.is_float else np.zeros(s.nchunks, dtype=np.uint16)
        self._agreed = np.zeros(s.nchunks, dtype=np.uint16)
        self.base = session.seq[:w].copy()
        self.pos = np.zeros(w, dtype=np.int64)
        self.deadline = np.full(w, np.inf)
        self.sent_at = np.zeros(w)
        self.tries = np.zeros(w, dtype=np.int64)
        self.sendbuf = np.zeros(w, dtype=record_dtype(n))  # the packet each slot has in flight
        sh = self.sh = self.sendbuf["h"]
        self.sp = self.sendbuf["p"]
        sh["version"], sh["type"], sh["epoch"] = VERSION, MsgType.CONTRIB, p.epoch
        sh["job"], sh["worker"] = p.job, p.worker_id
        sh["op"] = call.op(0)  # an allreduce (only allreduces come here): one op field for every use
        self.seg = HEADER_SIZE + 4 * n
        self._rto = session.rto.value

    def positions(self) -> tuple[list[int], list[int]]:
        return self.pos.tolist(), self.nuses.tolist()

    def agreed(self) -> np.ndarray:
        return self._agreed

    def base_seq(self, j: int) -> int:
        return int(self.base[j])

    def next_deadline(self) -> float:
        return self.join_due if self.rejoin is not None else float(self.deadline.min())

    def start(self, now: float) -> list[Send]:
        return self._prepare(self.slots, now)

    def _resend_all(self, now: float) -> list[Send]:
        self.sh["epoch"] = self.params.epoch
        js = np.flatnonzero(self.pos < self.nuses)
        if not js.size:
            return []
        self.sh["flags"][js] = _RETX
        self.tries[js] = 1  # Karn: no samples from these uses
        self.deadline[js] = now + self._rto
        return self._transmit(js)

    def _transmit(self, js: np.ndarray) -> list[Send]:
        s = self.schedule
        c = s.chunks(js, self.pos[js])
        full = (c >= 0) & (c < s.nfull)
        sends: list[Send] = []
        if full.any():
            sends.append(((self.sendbuf[js[full]].view(np.uint8),), self.seg))
        if (c < 0).any():
            sends.append(((self.sh[js[c < 0]].view(np.uint8),), HEADER_SIZE))
        for j in js[c == s.nfull]:  # the short last chunk travels alone
            sends.append(((self.sh[j : j + 1].view(np.uint8), self.sp[j, : s.tail].view(np.uint8)), 0))
        return sends

    def _prepare(self, js: np.ndarray, now: float) -> list[Send]:
        s, p, sh, sp, bits = self.schedule, self.params, self.sh, self.sp, self.bits
        k = self.pos[js]
        c = s.chunks(js, k)
        full = (c >= 0) & (c < s.nfull)
        if full.any():
            jf, cf = js[full], c[full]
            sp[jf] = quantize(self.flat2d[cf], self._agreed[cf], bits) if self.is_float else self.flat2d[cf]
        for j in js[c == s.nfull]:
            last = self.flat[s.nfull * s.elements :].reshape(1, -1)
            sp[j, : s.tail] = quantize(last, self._agreed[s.nfull :], bits)[0] if self.is_float else last[0]
        seq = (self.base[js] + k) & 0xFFFFFFFF
        if self.is_float:
            has_next = k + 1 < self.nuses[js]
            nxt = np.where(has_next, s.chunks(js, k + 1), 0)
            sh["exp"][js] = np.where(has_next, self.exps[nxt], EXP_NONE)
        sh["flags"][js] = 0
        sh["slot"][js] = (p.slot_base + js) | ((seq & 1) << 15)
        sh["count"][js] = s.counts(c)
        sh["seq"][js] = seq
        self.sent_at[js] = now
        self.tries[js] = 0
        self.deadline[js] = now + self._rto
        return self._transmit(js)

    def on_timer(self, now: float) -> list[Send]:
        if self.rejoin is not None:
            return self.rejoin_timer(now)
        late = np.flatnonzero(self.deadline <= now)
        if not late.size:
            return []
        self.sh["flags"][late] = _RETX
        self.tries[late] += 1
        self.deadline[late] = now + np.minimum(
            self.session.rto.max_rto, self._rto * 2.0 ** np.minimum(self.tries[late], 16)
        )
        self.stats.retransmissions += int(late.size)
        return self._transmit(late) + self.reoffers(now)

    def on_run(self, buf: Any, size: int, count: int, offset: int, now: float) -> list[Send]:
        """Take ``count`` datagrams of ``size`` bytes at ``offset`` of ``buf`` (a GRO run, or several
        collected back to back); returns the next uses of the slots they completed."""
        stats = self.stats
        if size < HEADER_SIZE or (size - HEADER_SIZE) % 4:
            stats.stale += count
            return []
        s, p, pos, nuses = self.schedule, self.params, self.pos, self.nuses
        rec = np.frombuffer(buf, record_dtype((size - HEADER_SIZE) // 4), count, offset)
        h = rec["h"]
        types = h["type"]
        control = types == _REFUSE
        if self.rejoin is not None:
            control |= (types == _JOIN_ACK) | (types == _PENDING)
        if control.any():  # the recovery's (or a refusal that ends the call): rare, one at a time
            view = memoryview(buf)
            for r in np.flatnonzero(control).tolist():
                self.control(view[offset + r * size : offset + (r + 1) * size], size, now)
            stats.stale -= int(control.sum())  # counted by control() where they are stale
        j = (h["slot"] & (SET_BIT - 1)).astype(np.int64) - p.slot_base
        ok = (h["version"] == VERSION) & (h["job"] == p.job) & (h["epoch"] == p.epoch)
        ok &= (j >= 0) & (j < s.window)
        jj = np.where(ok, j, 0)
        ok &= (pos[jj] < nuses[jj]) & (h["seq"] == ((self.base[jj] + pos[jj]) & 0xFFFFFFFF))
        for i in np.flatnonzero(ok & (h["type"] == _PENDING)):
            self.pending[int(jj[i])] = int(h["bitmap"][i])
        c = s.chunks(jj, pos[jj])
        cnt = s.counts(c)
        ok &= (h["type"] == _RESULT) & (h["count"] == cnt) & (cnt == (size - HEADER_SIZE) // 4)
        sel = np.flatnonzero(ok)
        js, first = np.unique(jj[sel], return_index=True)  # a duplicate in the same run counts once
        sel = sel[first]
        stats.stale += count - int(sel.size)
        if not sel.size:
            return []
        c = c[sel]
        got = rec["p"][sel]
        full = (c >= 0) & (c < s.nfull)
        bits, factor = self.bits, self.factor
        final = (h["flags"][sel] & _FINAL) != 0  # results that were offered: copied as they are
        if final.any():
            n = s.elements
            for fi in np.flatnonzero(final & (c >= 0)).tolist():
                lo = int(c[fi]) * n
                fcnt = s.count(int(c[fi]))
                self.out.view(np.uint32)[lo : lo + fcnt] = got[fi, :fcnt].view(">u4")
            full &= ~final
        if full.any():
            cf = c[full]
            self.out2d[cf] = (
                dequantize(got[full], self._agreed[cf], bits, factor=factor) if self.is_float else got[full]
            )
        for i in np.flatnonzero((c == s.nfull) & ~final):
            row = got[i : i + 1, : s.tail]
            self.out[s.nfull * s.elements :] = (
                dequantize(row, self._agreed[s.nfull :], bits, factor=factor)[0] if self.is_float else row[0]
            )
        k = pos[js]
        if self.is_float:
            has_next = k + 1 < nuses[js]
            self._agreed[s.chunks(js[has_next], k[has_next] + 1)] = h["exp"][sel][has_next]
        fresh = self.tries[js] == 0  # Karn: only unambiguous samples
        if fresh.any():
            self.session.rto.sample(float(np.median(now - self.sent_at[js[fresh]])))
        for j_ in js:
            self.pending.pop(int(j_), None)
        pos[js] = k + 1
        self.last_progress = now
        done = pos[js] >= nuses[js]
        self.deadline[js[done]] = np.inf
        self.remaining -= int(done.sum())
        return self._prepare(js[~done], now) if not done.all() else []
