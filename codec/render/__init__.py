"""Renderer backends behind one interface; pick one with :func:`get_backend`."""

from __future__ import annotations

from codec.render.base import TILE, RenderBackend

__all__ = ["TILE", "RenderBackend", "get_backend", "available_backends"]


def available_backends() -> list[str]:
    """Names :func:`get_backend` accepts on this machine."""
    return ["torch", "patch", "dense"]  # CUDA backends (gsplat) are added here when they exist


def get_backend(name: str = "torch") -> RenderBackend:
    """The backend called ``name``: ``torch`` (tile-binned reference, CPU and CUDA),
    ``patch`` (patch-row renderer with a faster differentiable render, same inference
    render as ``torch``) or ``dense`` (brute force, tests only). Fast CUDA backends
    (gsplat, imported lazily inside their module) plug in here under their own names."""
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
