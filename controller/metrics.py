"""The controller's Prometheus endpoint (``netagg controller --metrics HOST:PORT``).

A collector reads, at scrape time, what the controller already knows: the store (jobs, placements,
slots) and the monitor (switch health, the per-job counters it read at its last round, every
``--health-interval`` seconds). A scrape makes no call to any switch. Series (labels in braces):

- ``netagg_switch_up{switch}``: 1 while it answers health checks, 0 when down;
  ``netagg_switch_health_failures{switch}``; ``netagg_switch_slots{switch,use="used"|"free"}``;
  ``netagg_switch_jobs{switch}``.
- ``netagg_job_state{job,name,state}``: 1 for the job's state, 0 for the others;
  ``netagg_job_workers{job}`` and ``netagg_job_workers_joined{job}`` (at the controller);
  ``netagg_job_last_active_timestamp_seconds{job}``.
- Per job and switch, from the switch's own per-job counters: ``netagg_job_packets_received_total``,
  ``netagg_job_received_bytes_total``, ``netagg_job_<event>_total`` for contributions, completions,
  retransmissions, repeats, offers, recoveries, refusals, joins and epochs (and any other counter the
  switch reports), ``netagg_job_drops_total{job,switch,reason}``, ``netagg_job_switch_joined{job,switch}``
  (members of the round at the switch) and ``netagg_job_epoch{job,switch}``.

Example::

    server, port = serve_metrics("127.0.0.1", 0, service)
    urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read()
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from netagg.v1 import control_pb2 as pb

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from controller.service import ControllerService

__all__ = ["ControllerCollector", "serve_metrics"]

#: Per-job switch counters whose series are named otherwise than netagg_job_<name>_total.
_RENAMED = {"packets_in": "packets_received", "bytes_in": "received_bytes"}
_HELP = {
    "packets_in": "Datagrams of the job the switch received",
    "bytes_in": "Bytes of the job's datagrams the switch received",
    "contributions": "First contributions added into a use",
    "completions": "Uses completed (a RESULT sent)",
    "retransmissions": "Contributions flagged RETX",
    "repeats": "Contributions from a worker whose bit was in already",
    "offers": "OFFERs taken (recovery after a restart)",
    "recoveries": "Uses completed from an OFFER",
    "refusals": "REFUSEs sent",
    "joins": "JOINs taken",
    "epochs": "JOIN rounds completed",
}


class ControllerCollector(Collector):
    """Reads ``service``'s store and monitor at each scrape."""

    def __init__(self, service: ControllerService) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        yield from self._switches()
        yield from self._jobs()

    def _switches(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "netagg_switch_up", "1 while the switch answers health checks", labels=["switch"]
        )
        failures = GaugeMetricFamily(
            "netagg_switch_health_failures", "Health checks failed in a row", labels=["switch"]
        )
        slots = GaugeMetricFamily(
            "netagg_switch_slots", "Slots used by jobs and free", labels=["switch", "use"]
        )
        jobs = GaugeMetricFamily("netagg_switch_jobs", "Jobs placed on the switch", labels=["switch"])
        store, monitor = self.service.store, self.service.monitor
        for sw in store.switches():
            ranges = store.used_ranges(sw.switch_id)
            used = sum(hi - lo for lo, hi in ranges)
            health = monitor.health(sw.switch_id)
            up.add_metric([sw.switch_id], 1.0 if health.up else 0.0)
            failures.add_metric([sw.switch_id], health.failures)
            slots.add_metric([sw.switch_id, "used"], used)
            slots.add_metric([sw.switch_id, "free"], max(0, sw.info.total_slots - used))
            jobs.add_metric([sw.switch_id], len(ranges))
        yield from (up, failures, slots, jobs)

    def _jobs(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "netagg_job_state", "1 for the job's state, 0 for the others", labels=["job", "name", "state"]
        )
        workers = GaugeMetricFamily("netagg_job_workers", "Workers the job has", labels=["job"])
        joined = GaugeMetricFamily(
            "netagg_job_workers_joined", "Workers joined at the controller", labels=["job"]
        )
        active = GaugeMetricFamily(
            "netagg_job_last_active_timestamp_seconds",
            "When the job's packet counters last moved or a worker joined (0: not since the start)",
            labels=["job"],
        )
        at_switch = GaugeMetricFamily(
            "netagg_job_switch_joined",
            "Members of the job's JOIN round at the switch",
            labels=["job", "switch"],
        )
        epoch = GaugeMetricFamily(
            "netagg_job_epoch", "The job's epoch at the switch", labels=["job", "switch"]
        )
        drops = CounterMetricFamily(
            "netagg_job_drops", "The job's datagrams dropped, by reason", labels=["job", "switch", "reason"]
        )
        events: dict[str, CounterMetricFamily] = {}
        states = [v.name for v in pb.JobState.DESCRIPTOR.values if v.number != pb.JOB_STATE_UNSPECIFIED]
        for job in self.service.jobs():
            current = pb.JobState.Name(job.state)
            for name in states:
                label = name.removeprefix("JOB_STATE_").lower()
                state.add_metric([job.job_id, job.spec.name, label], 1.0 if name == current else 0.0)
            workers.add_metric([job.job_id], job.spec.workers)
            joined.add_metric([job.job_id], len(job.joined_ranks))
            active.add_metric([job.job_id], job.last_active_time)
            for c in self.service.monitor.job_counters(job):
                labels = [job.job_id, c.switch_id]
                at_switch.add_metric(labels, c.joined)
                epoch.add_metric(labels, c.epoch)
                for reason, n in sorted(c.drops.items()):
                    drops.add_metric([*labels, reason], n)
                for name, n in sorted(c.counters.items()):
                    family = events.get(name)
                    if family is None:
                        family = events[name] = CounterMetricFamily(
                            f"netagg_job_{_RENAMED.get(name, name)}",
                            _HELP.get(name, f"The switch's per-job counter {name}"),
                            labels=["job", "switch"],
                        )
                    family.add_metric(labels, n)
        yield from (state, workers, joined, active, at_switch, epoch, drops)
        yield from (events[name] for name in sorted(events))


def serve_metrics(host: str, port: int, service: ControllerService) -> tuple[WSGIServer, int]:
    """Serve ``service``'s metrics over HTTP at ``/metrics`` on ``host``:``port`` (0 picks a port) on a
    daemon thread; returns (server, bound port). ``server.shutdown()`` and ``server.server_close()``
    stop it."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ControllerCollector(service))
    server, _ = start_http_server(port, addr=host, registry=registry)
    return server, server.server_port
