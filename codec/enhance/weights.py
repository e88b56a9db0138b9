"""The shipped enhancer weights: where they are, their SHA-256, loading with a hash check.

A weights file is ``torch.save({"state_dict": ..., "meta": {...}})`` as written by
``python -m codec.enhance.train``. :func:`load_enhancer` checks the file's SHA-256 against
:data:`WEIGHTS_SHA256` (for the shipped file) before unpickling anything, and loads with
``weights_only=True``. A missing or damaged file raises :class:`EnhancerWeightsError` naming the
file and how to restore it.

The GOP record names the weights it was made with by :func:`model_tag` (the first two bytes of the
SHA-256), so a decoder holding other weights can tell.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import torch

from codec.enhance.model import EnhanceNet
from codec.errors import CodecError

WEIGHTS_PATH = Path(__file__).with_name("enhancer.pt")
WEIGHTS_SHA256 = "12ac43c89dc8f861234a1efadee66dc3d8a407d6ba727d0797a5324b3f26bb36"
RESTORE_HINT = (
    "restore it with `git checkout -- codec/enhance/enhancer.pt` (or reinstall splatpack), "
    "or retrain it with the command in codec/enhance/README.md"
)

_lock = threading.Lock()
_cache: dict[tuple[str, str], EnhanceNet] = {}


class EnhancerWeightsError(CodecError):
    """The enhancer's weights file is missing, damaged or does not fit the network."""


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def model_tag(sha256_hex: str) -> int:
    """u16 naming a weights file in the GOP record: the first two bytes of its SHA-256."""
    return int(sha256_hex[:4], 16)


def load_enhancer(
    path: Path | None = None, expected_sha256: str | None = None
) -> tuple[EnhanceNet, str]:
    """(network in eval mode, the file's SHA-256) for ``path`` (default: the shipped weights,
    checked against :data:`WEIGHTS_SHA256`; another path is checked against ``expected_sha256``
    when given). Cached per (path, hash). Raises EnhancerWeightsError naming the file."""
    p = WEIGHTS_PATH if path is None else Path(path)
    want = WEIGHTS_SHA256 if path is None else expected_sha256
    hint = RESTORE_HINT if path is None else "rewrite it with `python -m codec.enhance.train`"
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise EnhancerWeightsError(f"enhancer weights {p} cannot be read ({exc}); {hint}") from exc
    sha = hashlib.sha256(data).hexdigest()
    if want is not None and sha != want:
        raise EnhancerWeightsError(
            f"enhancer weights {p} are damaged or not the expected file "
            f"(sha256 {sha[:16]}..., expected {want[:16]}...); {hint}"
        )
    key = (str(p.resolve()), sha)
    with _lock:
        if key in _cache:
            return _cache[key], sha
        try:
            blob = torch.load(p, map_location="cpu", weights_only=True)
            net = EnhanceNet()
            net.load_state_dict(blob["state_dict"])
        except Exception as exc:  # unpickling or shape mismatch: a damaged or foreign file
            raise EnhancerWeightsError(
                f"enhancer weights {p} do not load into the network ({exc}); {hint}"
            ) from exc
        net.eval()
        for param in net.parameters():
            param.requires_grad_(False)
        _cache[key] = net
        return net, sha


def weights_meta(path: Path | None = None) -> dict[str, object]:
    """The metadata saved with a weights file (training command, settings, figures)."""
    p = WEIGHTS_PATH if path is None else Path(path)
    blob = torch.load(p, map_location="cpu", weights_only=True)
    meta = blob.get("meta", {})
    return dict(meta) if isinstance(meta, dict) else {}
