"""The switch's counters as Prometheus metrics (``netagg switch --metrics HOST:PORT``).

A :class:`SwitchCollector` reads the counters when Prometheus scrapes, never in between: the packet path
keeps counting in its own dicts (:meth:`switch.core.Dataplane.stats`, ``Dataplane.job_stats``) and pays
nothing for the endpoint. :func:`serve_metrics` serves the collector with ``prometheus_client``'s own
HTTP server on a thread of its own.

Series (every counter ends in ``_total``; ``direction`` is ``in`` or ``out``)::

    netagg_switch_up                              1 while the counters can be read
    netagg_switch_info{kind}                      1 ("python" or "bmv2")
    netagg_switch_jobs                            jobs installed
    netagg_switch_packets_total{direction}        datagrams received / sent
    netagg_switch_bytes_total{direction}          their bytes (UDP payload; BMv2: whole frames)
    netagg_switch_<event>_total                   contributions, completions, retransmissions, repeats,
                                                  offers, recoveries, refusals, joins, epochs, and any
                                                  other counter the dataplane keeps
    netagg_switch_drops_total{reason}             datagrams dropped, by reason (docs/protocol.md)
    netagg_job_packets_total{job,direction}       the same per job (label job = the wire job id)
    netagg_job_bytes_total{job,direction}
    netagg_job_<event>_total{job}
    netagg_job_drops_total{job,reason}
    netagg_job_joined_workers{job}                members of the job's JOIN round now
    netagg_job_workers{job}                       workers the job has (its fan-in at this switch)
    netagg_job_epoch{job}                         the job's epoch (mod 256, as on the wire)
    netagg_job_running{job}                       1 while the job's JOIN round is complete

Example::

    collector = SwitchCollector(lambda: Snapshot(dataplane.stats()), kind="python")
    server = serve_metrics(collector, ("127.0.0.1", 0))  # server.address: the bound (host, port)
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["MetricsServer", "Snapshot", "SwitchCollector", "metric_families", "serve_metrics"]

log = logging.getLogger(__name__)

#: Counters every switch and job shows, 0 until the event first happens (a series that appears only
#: later makes rate() over the first interval wrong), with what they count.
EVENTS: dict[str, str] = {
    "contributions": "first contributions added to a sum",
    "completions": "uses completed (a RESULT sent to the job)",
    "retransmissions": "contributions flagged RETX by their sender",
    "repeats": "contributions already counted (answered with the RESULT or PENDING)",
    "offers": "OFFERs of a held result accepted (docs/protocol.md, Recovery)",
    "recoveries": "uses completed from an OFFER",
    "refusals": "REFUSE answers sent",
    "joins": "JOINs received",
    "epochs": "JOIN rounds completed",
}
_DIRECTIONS = frozenset(("packets_in", "packets_out", "bytes_in", "bytes_out"))  # label direction
_GAUGES = {  # per-job values that are states, not counts
    "joined": ("joined_workers", "members of the job's JOIN round now"),
    "epoch": ("epoch", "the job's epoch (mod 256, as on the wire)"),
    "running": ("running", "1 while the job's JOIN round is complete (its workers may contribute)"),
}
_NAME = re.compile(r"[^a-zA-Z0-9_]")


@dataclass(frozen=True)
class Snapshot:
    """The counters at one moment, as plain data the collector may read at leisure."""

    stats: Mapping[str, Any]
    """Switch-wide: ``{"counters": {name: n}, "drops": {reason: n}}`` (:meth:`Dataplane.stats`)."""
    jobs: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)
    """Per job id: counters, ``"drops"`` by reason, ``"joined"``, ``"epoch"``, ``"running"``
    (:meth:`Dataplane.job_stats`)."""
    workers: Mapping[int, int] | None = None
    """Per installed job id: its workers at this switch (None: the switch does not say, as BMv2's
    counters do not)."""


def _number(value: Any) -> float | None:
    """A counter's value as a float; a collection counts its members; anything else is not a number."""
    if isinstance(value, bool | int | float):
        return float(value)
    if isinstance(value, list | tuple | set | frozenset | dict):
        return float(len(value))
    return None


def metric_families(snap: Snapshot, kind: str) -> list[Metric]:
    """The metric families of ``snap`` for a switch of ``kind`` (pure: tests read it without a server)."""
    info = GaugeMetricFamily("netagg_switch_info", "the switch's kind", labels=["kind"])
    info.add_metric([kind], 1)
    out: list[Metric] = [info]
    if snap.workers is not None:
        jobs = GaugeMetricFamily("netagg_switch_jobs", "jobs installed")
        jobs.add_metric([], len(snap.workers))
        out.append(jobs)
    out += _counter_families("netagg_switch", "the switch", snap.stats.get("counters", {}), [], [], True)
    drops = CounterMetricFamily(
        "netagg_switch_drops", "datagrams dropped, by reason (docs/protocol.md)", labels=["reason"]
    )
    for reason, n in sorted(snap.stats.get("drops", {}).items()):
        drops.add_metric([reason], float(n))
    out.append(drops)
    # Per job: one family per name, with a sample per job (a family per job would repeat the name).
    families: dict[str, Metric] = {}

    def add(metric: Metric) -> None:
        if metric.name in families:
            families[metric.name].samples.extend(metric.samples)
        else:
            families[metric.name] = metric

    for job_id in sorted(set(snap.jobs) | set(snap.workers or ())):
        label = str(job_id)
        values = snap.jobs.get(job_id, {})
        counters = {k: v for k, v in values.items() if k != "drops" and k not in _GAUGES}
        for metric in _counter_families("netagg_job", "the job", counters, ["job"], [label], False):
            add(metric)
        drops = CounterMetricFamily(
            "netagg_job_drops", "the job's datagrams dropped, by reason", labels=["job", "reason"]
        )
        for reason, n in sorted(values.get("drops", {}).items()):
            drops.add_metric([label, reason], float(n))
        add(drops)
        for key, (name, text) in _GAUGES.items():
            value = _number(values.get(key))
            if value is not None:
                gauge = GaugeMetricFamily(f"netagg_job_{name}", text, labels=["job"])
                gauge.add_metric([label], value)
                add(gauge)
        if snap.workers is not None and job_id in snap.workers:
            workers = GaugeMetricFamily(
                "netagg_job_workers", "the job's workers at this switch", labels=["job"]
            )
            workers.add_metric([label], snap.workers[job_id])
            add(workers)
    return out + list(families.values())


def _counter_families(
    prefix: str, whose: str, counters: Mapping[str, Any], labels: list[str], values: list[str], both: bool
) -> list[Metric]:
    """``prefix``'s counter families from ``counters`` ({name: n}), each sample with ``labels``=``values``:
    packets and bytes by direction (``out`` only if counted, unless ``both``), then the :data:`EVENTS`
    (0 when absent), then the rest."""
    out: list[Metric] = []
    for what in ("packets", "bytes"):
        family = CounterMetricFamily(
            f"{prefix}_{what}", f"{what} {whose} received (in) and sent (out)", labels=[*labels, "direction"]
        )
        for direction in ("in", "out"):
            key = f"{what}_{direction}"
            if both or direction == "in" or key in counters:
                family.add_metric([*values, direction], _number(counters.get(key, 0)) or 0.0)
        out.append(family)
    rest = sorted(k for k in counters if k not in EVENTS and k not in _DIRECTIONS)
    for name in [*EVENTS, *rest]:
        value = _number(counters.get(name, 0))
        if value is None:
            continue
        text = EVENTS.get(name, f"{whose}'s {name.replace('_', ' ')} counter")
        family = CounterMetricFamily(
            f"{prefix}_{_NAME.sub('_', name)}",
            f"{text}, {'per job' if labels else 'switch-wide'}",
            labels=labels,
        )
        family.add_metric(values, value)
        out.append(family)
    return out


class SwitchCollector(Collector):
    """A Prometheus collector that calls ``snapshot`` at each scrape and reports what it returns.

    ``snapshot`` runs on the HTTP server's thread: it must copy what the switch's own thread changes
    (:meth:`switch.daemon.PythonSwitch` takes the lock its packet loop holds per datagram). If it
    raises, the scrape reports ``netagg_switch_up 0`` and the error is logged."""

    def __init__(self, snapshot: Callable[[], Snapshot], *, kind: str) -> None:
        self.snapshot = snapshot
        self.kind = kind

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("netagg_switch_up", "1 if the switch's counters could be read")
        try:
            snap = self.snapshot()
        except Exception as exc:  # a BMv2 that exited: say so instead of failing the whole scrape
            log.warning("metrics: reading the switch's counters failed: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from metric_families(snap, self.kind)


class MetricsServer:
    """``prometheus_client``'s HTTP server for one collector, on its own thread; :meth:`close` stops it."""

    def __init__(self, collector: Collector, address: tuple[str, int]) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)
        host, port = address
        self._httpd, self._thread = start_http_server(port, addr=host, registry=registry)
        bound = self._httpd.server_address
        self.address: tuple[str, int] = (host, int(bound[1]))
        """The (host, port) it serves on (the port the kernel chose for port 0)."""

    @property
    def url(self) -> str:
        host = f"[{self.address[0]}]" if ":" in self.address[0] else self.address[0]
        return f"http://{host}:{self.address[1]}/metrics"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def serve_metrics(collector: Collector, address: tuple[str, int]) -> MetricsServer:
    """Serve ``collector`` as Prometheus text at ``http://HOST:PORT/metrics`` (port 0: a free one).
    OSError if the address cannot be bound."""
    return MetricsServer(collector, address)
