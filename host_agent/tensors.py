"""Tensors in and out of the engine: any numpy array or CPU/GPU torch tensor of a supported dtype
becomes a flat float32 or int32 array for the engine (or, for all-gather and broadcast, its bytes), and
the engine's result goes back into the caller's type, dtype and shape (or into ``out``)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["as_bytes", "as_numpy", "bytes_view", "from_bytes", "like", "output_for"]

_NARROWED = (
    "netagg reduces float32, bfloat16, float16 and int32; {dtype} would be narrowed to float32 (convert "
    "it yourself if that is what you want; all_gather and broadcast carry it exactly)"
)


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
        if dtype in (torch.float16, torch.bfloat16):
            t = t.float()
        elif dtype == torch.float64:
            raise TypeError(_NARROWED.format(dtype=dtype))
        elif dtype not in (torch.float32, torch.int32):
            raise TypeError(f"netagg reduces float32, bfloat16, float16 and int32 tensors, not {dtype}")
        arr = t.cpu().contiguous().reshape(-1).numpy()

        def restore_torch(out: np.ndarray) -> Any:
            return torch.from_numpy(out).reshape(shape).to(device=device, dtype=dtype)

        return arr, restore_torch
    if not isinstance(x, np.ndarray):  # a list or scalar of Python floats: float32, as documented
        a = np.asarray(x)
        x = a.astype(np.float32) if a.dtype == np.float64 else a
    a = np.asarray(x)
    dtype, shape = a.dtype, a.shape
    if dtype == np.float16:
        a = a.astype(np.float32)
    elif dtype == np.float64:
        raise TypeError(_NARROWED.format(dtype=dtype))
    elif dtype not in (np.float32, np.int32):
        raise TypeError(f"netagg reduces float32, float16 and int32 arrays, not {dtype}")
    flat = np.ascontiguousarray(a).reshape(-1)

    def restore_numpy(out: np.ndarray) -> np.ndarray:
        return out.reshape(shape).astype(dtype, copy=False)

    return flat, restore_numpy


def as_bytes(x: Any) -> tuple[np.ndarray, Any]:
    """``x``'s bytes (uint8, flat, C order) and a function that turns such bytes (of any length that is
    a multiple of the element size) back into a 1-D array or tensor of x's kind, dtype and device."""
    if type(x).__module__.startswith("torch"):
        import torch

        t = x.detach()
        dtype, device = t.dtype, t.device
        raw = t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy()

        def back_torch(b: np.ndarray) -> Any:
            return torch.from_numpy(b).view(dtype).to(device)

        return raw, back_torch
    a = np.ascontiguousarray(x)
    dtype = a.dtype

    def back_numpy(b: np.ndarray) -> np.ndarray:
        return b.view(dtype)

    return a.reshape(-1).view(np.uint8), back_numpy


def bytes_view(out: Any) -> np.ndarray | None:
    """A writable flat uint8 view of ``out``'s memory (a contiguous numpy array or CPU torch tensor),
    or None."""
    if out is None:
        return None
    if type(out).__module__.startswith("torch"):
        import torch

        if out.device.type != "cpu" or not out.is_contiguous():
            return None
        return out.detach().view(-1).view(torch.uint8).numpy()
    if isinstance(out, np.ndarray) and out.flags.c_contiguous and out.flags.writeable:
        return out.reshape(-1).view(np.uint8)
    return None


def from_bytes(out: Any, result: Any) -> Any:
    """Copy ``result`` (a 1-D array or tensor of out's kind and dtype) into ``out`` and return it; or
    return ``result`` itself when there is no ``out``."""
    if out is None:
        return result
    if _numel(result) != _numel(out):
        raise ValueError(f"out has {_numel(out)} elements, the result {_numel(result)}")
    if result.dtype != out.dtype:
        raise ValueError(f"out has dtype {out.dtype}, the result {result.dtype}")
    if type(out).__module__.startswith("torch"):
        out.copy_(result.reshape(out.shape))
    else:
        out[...] = result.reshape(out.shape)
    return out


def like(x: Any, flat: np.ndarray) -> Any:
    """``flat`` (float32 or int32, 1-D) as a 1-D array or tensor of x's kind, dtype and device."""
    if type(x).__module__.startswith("torch"):
        import torch

        return torch.from_numpy(flat).to(device=x.device, dtype=x.dtype)
    return flat.astype(np.asarray(x).dtype, copy=False)


def _numel(x: Any) -> int:
    return int(x.numel()) if hasattr(x, "numel") and callable(x.numel) else int(np.size(x))
