"""netagg's control plane: admits jobs, places them on switches, programs the switches, hands workers
their slots (the Controller service of proto/netagg/v1/control.proto).

``placement`` is pure (which switch, which slots; typed errors carrying a gRPC status code), ``store``
keeps the state in SQLite, ``agents`` talks to the switches' SwitchAgent services, ``monitor`` checks
their health and reads their per-job counters, ``service`` is the thin gRPC servicer over them, and
``metrics`` serves what they know as Prometheus text.

>>> from controller import Store, serve_controller
>>> from netagg.rpc import Tokens
>>> server, port, service = serve_controller("127.0.0.1:0", Store("jobs.db"), Tokens.single(token))
"""

from controller.errors import ControlError
from controller.monitor import Monitor
from controller.placement import MAX_JOB_WORKERS, Placement, place, placement_slots
from controller.service import ControllerService, serve_controller
from controller.store import Member, Store, SwitchRecord

__all__ = [
    "MAX_JOB_WORKERS",
    "ControlError",
    "ControllerService",
    "Member",
    "Monitor",
    "Placement",
    "Store",
    "SwitchRecord",
    "place",
    "placement_slots",
    "serve_controller",
]
