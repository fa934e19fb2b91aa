"""netagg: an in-network aggregation emulator. The wire protocol lives in :mod:`netagg.protocol`."""

__version__ = "0.1.0"
