"""Which per-element loops run: a fresh interpreter with NETAGG_KERNELS=numpy takes the reference ones."""

from __future__ import annotations

import os
import subprocess
import sys

from netagg import kernels

try:
    from netagg import _kernels as native  # type: ignore[attr-defined]
except ImportError:  # no C compiler at install time
    native = None


def test_numpy_can_be_forced() -> None:
    """NETAGG_KERNELS=numpy selects the reference versions (and the default is C where it was built)."""
    code = "from netagg import kernels; print(kernels.IMPLEMENTATION)"
    env = {**os.environ, "NETAGG_KERNELS": "numpy"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "numpy"
    forced = os.environ.get("NETAGG_KERNELS", "").lower() == "numpy"  # netagg/kernels.py's own test
    expected = "numpy" if native is None or forced else "c"
    assert expected == kernels.IMPLEMENTATION
