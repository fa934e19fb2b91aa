"""Tensors in and out of the engine: any numpy array or CPU/GPU torch tensor of a supported dtype
becomes a flat float32 or int32 array for the engine, and the engine's result goes back into the
caller's type, dtype and shape (or into ``out``)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["as_numpy", "output_for"]


def output_for(out: Any, x: Any, flat: np.ndarray) -> tuple[np.ndarray | None, Any]:
    """Where the engine writes (a flat view of ``out`` when possible) and how the caller gets it back."""
    if out is None:
        return None, lambda restore, result: restore(result)
    if tuple(out.shape) != tuple(x.shape):
        raise ValueError(f"out has shape {tuple(out.shape)}, the input {tuple(x.shape)}")
    if type(out).__module__.startswith("torch"):
        import torch

        if out.dtype != x.dtype:
            raise ValueError(f"out has dtype {out.dtype}, the input {x.dtype}")
        if out.device.type == "cpu" and out.is_contiguous() and out.dtype in (torch.float32, torch.int32):
            return out.view(-1).numpy(), lambda restore, result: out

        def copy_torch(restore: Any, result: np.ndarray) -> Any:
            out.copy_(restore(result))
            return out

        return None, copy_torch
    if not isinstance(out, np.ndarray) or out.dtype != np.asarray(x).dtype:
        raise ValueError("out must be an array of the input's dtype")
    if out.flags.c_contiguous and out.dtype == flat.dtype:
        return out.reshape(-1), lambda restore, result: out

    def copy_numpy(restore: Any, result: np.ndarray) -> np.ndarray:
        out[...] = restore(result)
        return out

    return None, copy_numpy


def as_numpy(x: Any) -> tuple[np.ndarray, Any]:
    """A flat float32 or int32 array for ``x`` and a function that turns a result back into x's kind."""
    mod = type(x).__module__
    if mod.startswith("torch"):
        import torch

        t = x.detach()
        dtype, shape, device = t.dtype, t.shape, t.device
        if dtype in (torch.float16, torch.bfloat16, torch.float64):
            t = t.float()
        elif dtype not in (torch.float32, torch.int32):
            raise TypeError(
                f"netagg sums float32/int32 (and float16/bfloat16/float64 as float32), not {dtype}"
            )
        arr = t.cpu().contiguous().reshape(-1).numpy()

        def restore_torch(out: np.ndarray) -> Any:
            return torch.from_numpy(out).reshape(shape).to(device=device, dtype=dtype)

        return arr, restore_torch
    a = np.asarray(x)
    dtype, shape = a.dtype, a.shape
    if dtype in (np.float16, np.float64):
        a = a.astype(np.float32)
    elif dtype not in (np.float32, np.int32):
        raise TypeError(f"netagg sums float32/int32 (and float16/float64 as float32), not {dtype}")
    flat = np.ascontiguousarray(a).reshape(-1)

    def restore_numpy(out: np.ndarray) -> np.ndarray:
        return out.reshape(shape).astype(dtype, copy=False)

    return flat, restore_numpy
