"""netagg host agent: allreduce through an aggregation switch.

>>> from host_agent import Worker
>>> with Worker("127.0.0.1:47000", rank=0, world_size=4) as w:
...     total = w.allreduce(gradient)

Importing it also registers the torch.distributed backend ``"netagg"`` (host_agent.torch_backend,
docs/torch.md) where torch is installed: at once if torch.distributed is loaded, else right after it
is. Without torch nothing of torch is imported.
"""

import importlib.abc
import importlib.machinery
import logging
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from host_agent.errors import ControllerError
from host_agent.worker import NetAggError, NetAggTimeout, NonFiniteError, Worker, parse_address
from netagg.quantize import block_exponents, dequantize, error_bound, quantize

__all__ = [
    "ControllerError",
    "register_torch_backend",
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


def register_torch_backend() -> bool:
    """Register the torch.distributed backend ``"netagg"`` (idempotent); False where torch is missing."""
    try:
        from host_agent.torch_backend import register
    except ImportError:
        return False
    register()
    return True


def _torch_autoload() -> None:
    """torch's ``torch.backends`` entry point (pyproject.toml): runs inside ``import torch``, so it
    never raises (torch would turn that into an error of every ``import torch``)."""
    try:
        register_torch_backend()
    except Exception as exc:
        logging.getLogger(__name__).warning("netagg: torch.distributed backend not registered: %s", exc)


class _AfterTorchDistributed(importlib.abc.MetaPathFinder):
    """Registers the backend as soon as ``torch.distributed`` has been imported (host_agent was
    imported first; once installed, torch's entry point does the same). Finds nothing itself: it
    wraps the spec the path finder gives for that one module, then leaves ``sys.meta_path``."""

    def find_spec(self, name: str, path: Sequence[str] | None, target: ModuleType | None = None) -> Any:
        if name != "torch.distributed":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        loader = spec.loader if spec is not None else None
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run(module)
            _torch_autoload()

        loader.exec_module = exec_module  # type: ignore[method-assign]  # this spec's own loader
        return spec


if "torch.distributed" in sys.modules:
    _torch_autoload()
elif not any(isinstance(f, _AfterTorchDistributed) for f in sys.meta_path):
    sys.meta_path.insert(0, _AfterTorchDistributed())
