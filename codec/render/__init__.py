"""Renderer backends behind one interface; pick one with :func:`get_backend`."""

from __future__ import annotations

import torch

from codec.render.base import TILE, RenderBackend

__all__ = ["TILE", "RenderBackend", "get_backend", "available_backends", "resolve_backend_name"]


def available_backends() -> list[str]:
    """Names :func:`get_backend` accepts on this machine (``cpu`` only where the C++ kernel
    builds; CUDA backends, gsplat, are added here when they exist)."""
    from codec.render.fused_cpu import fused_available

    return ["auto", *(["cpu"] if fused_available() else []), "torch", "patch", "dense"]


def resolve_backend_name(name: str, device: str | torch.device = "cpu") -> str:
    """``auto`` becomes the fastest backend for ``device``: the fused C++ ``cpu`` renderer on the
    CPU when it is built, else ``patch``; other names are returned unchanged."""
    if name != "auto":
        return name
    if torch.device(device).type == "cpu":
        from codec.render.fused_cpu import fused_available

        if fused_available():
            return "cpu"
    return "patch"


def get_backend(name: str = "torch", device: str | torch.device = "cpu") -> RenderBackend:
    """The backend called ``name``: ``auto`` (see :func:`resolve_backend_name`), ``cpu`` (fused
    C++/OpenMP, CPU only, forward bit-identical to the canonical render), ``torch`` (tile-binned
    PyTorch reference, CPU and CUDA), ``patch`` (patch-row PyTorch renderer with a faster
    differentiable render, same inference render as ``torch``) or ``dense`` (brute force, tests
    only). Fast CUDA backends (gsplat, imported lazily inside their module) plug in here."""
    name = resolve_backend_name(name, device)
    if name == "cpu":
        from codec.render.fused_cpu import FusedCpuBackend

        return FusedCpuBackend()
    if name == "torch":
        from codec.render.torch_tiles import TorchTileBackend

        return TorchTileBackend()
    if name == "patch":
        from codec.render.torch_patches import PatchBackend

        return PatchBackend()
    if name == "dense":
        from codec.render.dense import DenseBackend

        return DenseBackend()
    raise ValueError(f"unknown render backend {name!r}; choose one of {available_backends()}")
