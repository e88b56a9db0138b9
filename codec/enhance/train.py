"""Train the enhancer: ``python -m codec.enhance.train --out codec/enhance/enhancer.pt``.

Deterministic for a seed (one CPU thread, fixed data order). The pairs come from
:mod:`codec.enhance.data` (the project's own encoder on images bundled in scikit-image and
matplotlib) and are cached under ``--cache-dir``. See codec/enhance/README.md for the exact
command behind the shipped weights.

Per step: a batch of random ``patch`` x ``patch`` crops of (decoded, source) pairs, random
flips; a share of the inputs is moved part of the way back to the source (``x = s + a (d - s)``,
``a`` in [0.3, 1]: the "diffusion" schedule of degradation strengths); ``t`` is the strength of
each input (:func:`codec.enhance.model.strength_of_psnr`). Half of the samples use their
content's modulation vector (one learnable ``m`` per crop, auto-decoder style, so the frozen
LoRA factors learn to be modulated), the rest ``m = 0`` (the base network); half get the
coarse side information of the residual. Loss: MSE to the source, plus a small L2 on ``m``.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from codec.enhance.data import PairSet, PairSettings, load_or_make_pairs
from codec.enhance.model import (
    N_MOD,
    PSNR_T0_DB,
    PSNR_T1_DB,
    EnhanceNet,
    side_image,
    side_map,
)

SIDE_STEPS = (2.0 / 255.0, 4.0 / 255.0, 8.0 / 255.0)  # side-information quantiser steps trained on
MOD_L2 = 1e-4  # weight of the L2 penalty on the per-content modulation vectors
GRAD_CLIP = 0.05  # max gradient norm of the network's parameters per step (stability)


@dataclass
class TrainConfig:
    steps: int = 4000
    batch: int = 16
    patch: int = 48
    lr: float = 3e-3
    mod_lr: float = 2e-2
    blend_share: float = 0.15  # share of inputs moved part of the way back to the source
    mod_share: float = 0.5  # share of samples using their content's modulation
    side_share: float = 0.5  # share of samples given side information
    seed: int = 0


@dataclass
class TrainResult:
    model: EnhanceNet
    losses: list[float] = field(default_factory=list)  # per step
    seconds: float = 0.0


def strength_from_mse(mse: Tensor) -> Tensor:
    """float32 [B] MSE in [0,1]^2 units -> t [B] (see strength_of_psnr)."""
    psnr = -10.0 * torch.log10(mse.clamp_min(1e-10))
    return ((PSNR_T0_DB - psnr) / (PSNR_T0_DB - PSNR_T1_DB)).clamp(0.0, 1.0)


def _batch(
    pairs: PairSet, cfg: TrainConfig, rng: np.random.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """(decoded, source) float32 [B, 3, p, p] and content int64 [B]."""
    n, s = len(pairs.content), pairs.source.shape[1]
    p = min(cfg.patch, s, pairs.source.shape[2])
    idx = rng.integers(0, n, size=cfg.batch)
    ys = rng.integers(0, pairs.source.shape[1] - p + 1, size=cfg.batch)
    xs = rng.integers(0, pairs.source.shape[2] - p + 1, size=cfg.batch)
    flips = rng.integers(0, 4, size=cfg.batch)
    dec, src = [], []
    for i, y, x, f in zip(idx, ys, xs, flips, strict=True):
        d = pairs.decoded[i, y : y + p, x : x + p]
        o = pairs.source[i, y : y + p, x : x + p]
        if f & 1:
            d, o = d[:, ::-1], o[:, ::-1]
        if f & 2:
            d, o = d[::-1], o[::-1]
        dec.append(d)
        src.append(o)

    def to_t(a: list[np.ndarray]) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(np.stack(a))).permute(0, 3, 1, 2).float() / 255

    return to_t(dec), to_t(src), torch.from_numpy(pairs.content[idx])


def train(pairs: PairSet, cfg: TrainConfig, log_every: int = 0) -> TrainResult:
    """Train a fresh EnhanceNet on ``pairs``; deterministic for ``cfg.seed`` on one thread."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = EnhanceNet()
    mods = torch.nn.Parameter(torch.zeros(max(pairs.n_contents, 1), N_MOD))
    opt = torch.optim.Adam(
        [
            {"params": model.base_parameters(), "lr": cfg.lr},
            {"params": [mods], "lr": cfg.mod_lr},
        ]
    )
    base_lrs = [g["lr"] for g in opt.param_groups]
    out = TrainResult(model)
    start = time.perf_counter()
    for step in range(cfg.steps):
        frac = step / max(cfg.steps, 1)
        for g, lr in zip(opt.param_groups, base_lrs, strict=True):
            g["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))  # cosine
        dec, src, content = _batch(pairs, cfg, rng)
        b, _, h, w = dec.shape
        a = torch.from_numpy(rng.uniform(0.3, 1.0, size=b)).float()
        a = torch.where(torch.from_numpy(rng.random(b) < cfg.blend_share), a, torch.ones(b))
        x = src + a[:, None, None, None] * (dec - src)
        t = strength_from_mse(((x - src) ** 2).mean(dim=(1, 2, 3)))
        use_m = torch.from_numpy(rng.random(b) < cfg.mod_share).float()[:, None]
        m = mods[content] * use_m
        step_i = rng.integers(0, len(SIDE_STEPS))
        side_step = SIDE_STEPS[step_i]
        use_side = torch.from_numpy(rng.random(b) < cfg.side_share).float()[:, None, None, None]
        side = side_image(side_map(src - x, side_step), side_step, h, w) * use_side
        pred = model(x, t, m, side)
        loss = F.mse_loss(pred, src) + MOD_L2 * (m**2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        out.losses.append(float(loss.detach()))
        if log_every and (step + 1) % log_every == 0:
            recent = float(np.mean(out.losses[-log_every:]))
            elapsed = time.perf_counter() - start
            print(
                f"step {step + 1}/{cfg.steps} loss {recent:.6f} ({-10 * math.log10(recent):.2f} dB)"
                f" {elapsed:.0f}s",
                flush=True,
            )
    out.seconds = time.perf_counter() - start
    model.eval()
    return out


def held_out_gain_db(model: EnhanceNet, pairs: PairSet) -> tuple[float, float]:
    """Mean PSNR (dB) of the decoded frames and of the base network's output (t from each frame's
    own PSNR, no modulation, no side information) over ``pairs``."""
    before, after = [], []
    with torch.no_grad():
        for i in range(len(pairs.content)):
            d = torch.from_numpy(pairs.decoded[i]).permute(2, 0, 1)[None].float() / 255
            s = torch.from_numpy(pairs.source[i]).permute(2, 0, 1)[None].float() / 255
            t = strength_from_mse(((d - s) ** 2).mean(dim=(1, 2, 3)))
            e = (model(d, t).clamp(0, 1) * 255).round() / 255
            before.append(-10 * math.log10(max(float(((d - s) ** 2).mean()), 1e-10)))
            after.append(-10 * math.log10(max(float(((e - s) ** 2).mean()), 1e-10)))
    return float(np.mean(before)), float(np.mean(after))


def save_weights(model: EnhanceNet, path: Path, meta: dict[str, object]) -> str:
    """Write the weights file (state dict + metadata); returns its SHA-256 hex."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "meta": meta}, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m codec.enhance.train", description=__doc__)
    ap.add_argument("--out", required=True, type=Path, help="weights file to write (.pt)")
    ap.add_argument("--steps", type=int, default=TrainConfig.steps)
    ap.add_argument("--batch", type=int, default=TrainConfig.batch)
    ap.add_argument("--patch", type=int, default=TrainConfig.patch)
    ap.add_argument("--lr", type=float, default=TrainConfig.lr)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--crops-per-image", type=int, default=PairSettings.crops_per_image)
    ap.add_argument("--cache-dir", type=Path, default=Path("var/enhance_pairs"))
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: deterministic)")
    ap.add_argument("--log-every", type=int, default=100)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = PairSettings(crops_per_image=args.crops_per_image, seed=args.seed)
    t0 = time.perf_counter()
    pairs = load_or_make_pairs(settings, args.cache_dir, log=lambda s: print(s, flush=True))
    pair_seconds = time.perf_counter() - t0
    print(f"{len(pairs.content)} pairs from {pairs.n_contents} crops ({pair_seconds:.0f}s)")
    cfg = TrainConfig(
        steps=args.steps, batch=args.batch, patch=args.patch, lr=args.lr, seed=args.seed
    )
    result = train(pairs, cfg, log_every=args.log_every)
    before, after = held_out_gain_db(result.model, pairs)
    meta: dict[str, object] = {
        "command": "python -m codec.enhance.train " + " ".join(argv or sys.argv[1:]),
        "train": asdict(cfg),
        "pairs": asdict(settings),
        "n_pairs": len(pairs.content),
        "train_seconds": round(result.seconds, 1),
        "final_loss": float(np.mean(result.losses[-100:])),
        "train_set_psnr_db": {"decoded": round(before, 3), "enhanced_base": round(after, 3)},
    }
    sha = save_weights(result.model, args.out, meta)
    print(f"train-set PSNR {before:.2f} -> {after:.2f} dB (base network, no modulation)")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes) sha256 {sha}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
