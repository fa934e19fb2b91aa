"""netagg host agent: allreduce through an aggregation switch.

>>> from host_agent import Worker
>>> with Worker("127.0.0.1:47000", rank=0, world_size=4) as w:
...     total = w.allreduce(gradient)
"""

from host_agent.errors import ControllerError
from host_agent.worker import NetAggError, NetAggTimeout, NonFiniteError, Worker, parse_address
from netagg.quantize import block_exponents, dequantize, error_bound, quantize

__all__ = [
    "ControllerError",
    "NetAggError",
    "NetAggTimeout",
    "NonFiniteError",
    "Worker",
    "block_exponents",
    "dequantize",
    "error_bound",
    "parse_address",
    "quantize",
]
