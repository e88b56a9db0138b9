"""The restoration network: a small fully convolutional residual U-Net conditioned on a strength t.

"One-step diffusion-style" (seed 000, GFix): the network is trained as a denoiser over a schedule of
degradation strengths ``t`` in [0, 1] (how far the decoded frame is from its source, see
:func:`strength_of_psnr`) and is applied in a single forward step at the ``t`` the encoder picks per
GOP. It predicts a residual that is added to the decoded frame.

Layout (``C1`` = 16 channels at 1/2 resolution, ``C2`` = 32 at 1/4)::

    x [B,3,H,W] (+ side [B,3,H,W]) -> pad to a multiple of 4 -> pixel_unshuffle(2) -> head conv
      -> stride-2 conv -> ``N_BLOCKS`` residual blocks at 1/4 (FiLM(t) between their two convs;
         the second conv of each block carries a modulated LoRA) -> conv + pixel_shuffle(2)
      -> + skip -> conv -> conv -> pixel_shuffle(2) -> crop -> x + residual

**Modulated LoRA** (GFix): each adapted conv ``W`` has frozen low-rank factors ``A`` (3x3 conv, C2
-> r) and ``B`` (1x1 conv, r -> C2) shipped with the weights; its output is
``W x + B(m * A x)`` where ``m`` (r values per adapted layer, ``N_BLOCKS * RANK`` in all) is the
only thing adapted per GOP. ``m = 0`` is the base network. The factors are trained together with a
per-training-image ``m`` (auto-decoder style, codec/enhance/train.py), so a new content's ``m``
found by a few gradient steps is effective.

**Side information** (seed 001): an optional coarse map of the rendering residual (source minus
decoded, averaged over ``SIDE_CELL`` x ``SIDE_CELL`` cells, quantised), upsampled to the frame
and fed as three extra input channels; zeros when absent (training drops it half the time).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

C2 = 32  # channels (at 1/4 resolution)
N_BLOCKS = 4  # residual blocks at 1/4 resolution (each has one modulated-LoRA conv)
RANK = 8  # LoRA rank r: modulation values per adapted layer
T_FEATURES = 8  # sinusoidal features of t
SIDE_CELL = 16  # side-information cell size in pixels
N_MOD = N_BLOCKS * RANK  # modulation values per GOP

PSNR_T0_DB = 45.0  # t = 0 at this PSNR of the decoded frame ...
PSNR_T1_DB = 15.0  # ... and t = 1 at this one


def strength_of_psnr(psnr_db: float) -> float:
    """The degradation strength ``t`` in [0, 1] of a decoded frame with this PSNR against its source."""
    return float(min(1.0, max(0.0, (PSNR_T0_DB - psnr_db) / (PSNR_T0_DB - PSNR_T1_DB))))


def t_features(t: Tensor) -> Tensor:
    """float32 [B] in [0, 1] -> float32 [B, T_FEATURES] (sin/cos at 4 frequencies)."""
    freqs = torch.tensor([1.0, 2.0, 4.0, 8.0], dtype=t.dtype, device=t.device) * math.pi
    ang = t[:, None] * freqs[None, :]
    return torch.cat([torch.sin(ang), torch.cos(ang)], dim=1)


class ModulatedLoRAConv(nn.Module):
    """3x3 conv ``C -> C`` plus ``B(m * A x)``; ``m`` float32 [B, r] (zeros: the plain conv)."""

    def __init__(self, channels: int, rank: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.lora_a = nn.Conv2d(channels, rank, 3, padding=1, bias=False)
        self.lora_b = nn.Conv2d(rank, channels, 1, bias=False)
        nn.init.normal_(self.lora_b.weight, std=0.02)

    def forward(self, x: Tensor, m: Tensor | None) -> Tensor:
        out = self.conv(x)
        if m is None:
            return out
        hidden = self.lora_a(x) * m[:, :, None, None]  # [B, r, h, w]
        return out + self.lora_b(hidden)


class ResBlock(nn.Module):
    """conv -> FiLM(t) -> LeakyReLU -> modulated-LoRA conv, plus the input."""

    def __init__(self, channels: int, rank: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.film = nn.Linear(T_FEATURES, 2 * channels)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.conv2 = ModulatedLoRAConv(channels, rank)

    def forward(self, x: Tensor, tf: Tensor, m: Tensor | None) -> Tensor:
        scale, shift = self.film(tf).chunk(2, dim=1)  # [B, C] each
        h = self.conv1(x) * (1.0 + scale[:, :, None, None]) + shift[:, :, None, None]
        return x + self.conv2(F.leaky_relu(h, 0.1), m)


class EnhanceNet(nn.Module):
    """Restoration network: ``forward(x [B,3,H,W] in [0,1], t [B], m [B,N_MOD] | None, side [B,3,H,W] | None)
    -> enhanced [B,3,H,W]`` (not clamped). Any H, W >= 1."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(3 * 16 + 3, C2, 1)
        self.blocks = nn.ModuleList([ResBlock(C2, RANK) for _ in range(N_BLOCKS)])
        self.tail = nn.Conv2d(C2, 3 * 16, 3, padding=1)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)  # type: ignore[arg-type]

    def forward(
        self, x: Tensor, t: Tensor, m: Tensor | None = None, side: Tensor | None = None
    ) -> Tensor:
        _, _, h, w = x.shape
        ph, pw = (-h) % 4, (-w) % 4
        xp = F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x
        if side is None:
            s4 = torch.zeros_like(xp[:, :, ::4, ::4])
        else:
            sp = F.pad(side, (0, pw, 0, ph), mode="replicate") if ph or pw else side
            s4 = F.avg_pool2d(sp, 4)  # [B, 3, H/4, W/4]
        tf = t_features(t.to(x.dtype))
        z = F.leaky_relu(self.head(torch.cat([F.pixel_unshuffle(xp, 4), s4], dim=1)), 0.1)
        for i, block in enumerate(self.blocks):
            mi = None if m is None else m[:, i * RANK : (i + 1) * RANK]
            z = block(z, tf, mi)  # [B, C2, H/4, W/4]
        res = F.pixel_shuffle(self.tail(z), 4)[:, :, :h, :w]  # [B, 3, H, W]
        return x + res

    def base_parameters(self) -> list[nn.Parameter]:
        """Every parameter (the LoRA factors included): what training updates."""
        return list(self.parameters())


def side_map(residual: Tensor, step: float) -> Tensor:
    """Coarse side information: residual [B,3,H,W] averaged over SIDE_CELL cells and quantised to
    ``step`` -> integer levels float32 [B,3,ceil(H/SIDE_CELL),ceil(W/SIDE_CELL)]."""
    pooled = F.avg_pool2d(residual, SIDE_CELL, ceil_mode=True)
    return torch.round(pooled / step)


def side_image(levels: Tensor, step: float, h: int, w: int) -> Tensor:
    """Levels [B,3,h',w'] from :func:`side_map` -> the network's side input [B,3,H,W] (bilinear)."""
    return F.interpolate(levels * step, size=(h, w), mode="bilinear", align_corners=False)
