"""netagg's Python aggregation switch: the dataplane core and its UDP backend."""

from switch.core import DROP_REASONS, Dataplane, JobConfig
from switch.udp import UdpSwitch

__all__ = ["DROP_REASONS", "Dataplane", "JobConfig", "UdpSwitch"]
