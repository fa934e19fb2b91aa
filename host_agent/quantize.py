"""Moved to :mod:`netagg.quantize` (quantization is part of the wire protocol); re-exported here."""

from netagg.quantize import *  # noqa: F403
from netagg.quantize import __all__  # noqa: F401
