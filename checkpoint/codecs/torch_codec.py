"""torch tensors as raw bytes: every dtype (bfloat16, float8, complex, bool ...).

Tensors are never passed through ``torch.save``: the bytes of the dense,
C-ordered values are copied into a host buffer (a ``uint8`` view, so bfloat16 is
just two bytes per element). CUDA tensors are copied asynchronously into pinned
memory; the caller synchronizes once after all copies (``synchronize``).

Unchanged tensors are found without reading them: a tensor whose storage,
layout and version counter (``t._version``) match the previous capture has not
been written through autograd-visible in-place ops. Writes that bypass the
counter (through ``t.data``, a numpy view, an extension's raw pointer) are
caught by ``differs``: a spot check in the capture, every byte before the
writer commits (see ``_capture.verify``).
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable
from typing import Any

import numpy as np
import torch

from .. import _native

__all__ = [
    "address", "copy_into", "describe", "differs", "extent", "matches", "name", "needs_pinned", "pinned_buffer",
    "restore", "synchronize", "unchanged", "version_token", "view_key",
]

name = "torch"


def matches(obj: object) -> bool:
    return (
        isinstance(obj, torch.Tensor)
        and obj.layout == torch.strided
        and not obj.is_quantized
        and not obj.is_meta
        and type(obj) in (torch.Tensor, torch.nn.Parameter)
    )


def describe(t: torch.Tensor) -> dict[str, Any]:
    itemsize = t.element_size()
    return {
        "fw": name,
        "dtype": str(t.dtype).removeprefix("torch."),
        "shape": tuple(t.shape),   # torch.Size holds plain ints
        "itemsize": itemsize,
        "nbytes": t.numel() * itemsize,
        "device": "cpu" if t.is_cpu else str(t.device),
        "grad": bool(t.requires_grad),
        "param": isinstance(t, torch.nn.Parameter),
    }


def address(t: torch.Tensor) -> int | None:
    """The first element's address; None for empty tensors (which may all share one)
    and for tensors whose memory is not exposed."""
    try:
        return int(t.data_ptr()) if t.numel() else None
    except RuntimeError:
        return None


def view_key(t: torch.Tensor) -> Hashable:
    """Storage, layout, dtype, device, type and autograd flags: a ``state_dict``'s tied
    weights (two detached tensors of one parameter) are equal."""
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()),
            t.dtype, t.device, type(t), t.requires_grad, t.is_conj(), t.is_neg())


def extent(t: torch.Tensor) -> tuple[Hashable, int, int] | None:
    start = address(t)
    if start is None:
        return None
    last = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    return (t.device, start, start + (last + 1) * t.element_size())


def needs_pinned(t: torch.Tensor) -> bool:
    return t.is_cuda and torch.cuda.is_available()


def pinned_buffer(nbytes: int) -> tuple[torch.Tensor, np.ndarray]:
    """A page-locked host buffer and a numpy view of it."""
    holder = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    return holder, holder.numpy()


def _values(t: torch.Tensor) -> torch.Tensor:
    """``t`` detached, with lazy conjugation and negation applied (the bytes a capture stores)."""
    src = t.detach()
    if src.is_conj():
        src = src.resolve_conj()
    if src.is_neg():
        src = src.resolve_neg()
    return src


def copy_into(t: torch.Tensor, out: Any, *, non_blocking: bool = False) -> None:
    if t.numel() == 0:
        return
    src = _values(t)
    nbytes = t.numel() * t.element_size()
    if isinstance(out, np.ndarray) and src.device.type == "cpu" and src.is_contiguous():
        # One copy on this thread (streaming stores when large: _native.copy):
        # torch's copy_ splits large copies across its intra-op pool, and one
        # descheduled worker stalls the whole pause when the cores are busy.
        # The uint8 view covers every dtype (bfloat16 too).
        _native.copy(out[:nbytes], src.reshape(-1).view(torch.uint8).numpy())
        return
    # CUDA (into pinned memory, asynchronously) and strided tensors
    dst = out if isinstance(out, torch.Tensor) else torch.from_numpy(out)
    dst[:nbytes].view(t.dtype).view(t.shape).copy_(src, non_blocking=non_blocking)


_COMPARE_CHUNK = 64 * 1024 * 1024   # device bytes brought to the host at a time by ``differs``


def differs(t: torch.Tensor, data: np.ndarray, *, quick: bool = False) -> bool:
    """Whether the tensor's bytes differ from ``data``.

    ``quick`` samples dense host tensors in place and says False for device,
    strided, lazily conjugated or negated ones (reading those would wait for
    the device or copy the tensor in the caller's pause). The full comparison
    brings device tensors to the host 64 MiB at a time.
    """
    from .._snapshot import bytes_differ

    if quick and (t.device.type != "cpu" or not t.is_contiguous() or t.is_conj() or t.is_neg()):
        return False
    src = _values(t)
    nbytes = t.numel() * t.element_size()
    flat = src.contiguous().reshape(-1).view(torch.uint8)
    if src.device.type == "cpu":
        return bytes_differ(flat.numpy(), data[:nbytes], quick=quick)
    for start in range(0, nbytes, _COMPARE_CHUNK):
        piece = flat[start:start + _COMPARE_CHUNK].cpu().numpy()
        if bytes_differ(piece, data[start:start + piece.nbytes]):
            return True
    return False


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def version_token(t: torch.Tensor) -> tuple[Any, ...] | None:
    """What identifies the tensor's current contents; None when it cannot be tracked."""
    if t.numel() == 0:
        return None
    try:
        version = t._version
    except RuntimeError:  # inference tensors have no version counter
        return None
    storage = t.untyped_storage()
    # The storage object is kept alive by the token, so its address cannot be
    # reused by another tensor while the token exists.
    return (storage, storage.data_ptr(), storage.nbytes(), t.storage_offset(), tuple(t.stride()), version)


def unchanged(t: torch.Tensor, token: tuple[Any, ...] | None) -> bool:
    current = version_token(t)
    return token is not None and current is not None and current[1:] == token[1:]


def _device_available(device: str) -> bool:
    dev = torch.device(device)
    if dev.type == "cpu":
        return True
    if dev.type == "cuda":
        return torch.cuda.is_available() and (dev.index or 0) < torch.cuda.device_count()
    if dev.type == "mps":
        return bool(torch.backends.mps.is_available())
    return False


def restore(meta: dict[str, Any], data: np.ndarray, *, share: bool = False) -> torch.Tensor:
    dtype = vars(torch).get(meta["dtype"])
    if not isinstance(dtype, torch.dtype) or dtype.itemsize != meta["itemsize"]:
        raise ValueError(f"{meta['dtype']!r} is not a torch dtype of {meta['itemsize']} bytes")
    nbytes = meta["nbytes"]
    if share and nbytes and isinstance(data, np.ndarray) and data.flags.writeable \
            and data.ctypes.data % dtype.itemsize == 0:
        # the decoded buffer becomes the tensor's storage: no copy, no fresh pages
        t = torch.from_numpy(data[:nbytes]).view(dtype).view(tuple(meta["shape"]))
    else:
        t = torch.empty(tuple(meta["shape"]), dtype=dtype)
        if nbytes:
            t.reshape(-1).view(torch.uint8).numpy()[:] = np.frombuffer(data, np.uint8, count=nbytes)
    device = meta.get("device", "cpu")
    if device != "cpu":
        if _device_available(device):
            t = t.to(device)
        else:
            warnings.warn(f"tensor was on {device}, which is not available here: restored on CPU", stacklevel=2)
    if meta.get("param"):
        return torch.nn.Parameter(t, requires_grad=meta["grad"])
    if meta.get("grad"):
        t.requires_grad_(True)
    return t
