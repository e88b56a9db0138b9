"""Training pairs for the enhancer: (splatpack-decoded crop, source crop), made by the project's own
encoder from images that ship inside Python packages (never from ``shared/data``: that is the
evaluation set).

Sources (:func:`source_images`), all bundled in wheels the project installs:

- scikit-image's ``skimage.data`` images that ship in the wheel (no download): the colour
  photographs in :data:`SKIMAGE_IMAGES` and the grey textures in :data:`SKIMAGE_GREY_IMAGES`;
- matplotlib's sample data (``matplotlib.cbook.get_sample_data``): :data:`MATPLOTLIB_IMAGES`.

Each image gives ``crops_per_image`` crops (positions from the seed); each crop is coded as a
two-frame GOP (the crop, then the same crop moved by a few pixels, so P-frame artefacts are in
the set too) at every quality in ``qualities`` with the ``fast`` preset. A pair carries the index
of its crop (its "content", one per-content modulation vector in training) and the quality.
The pairs are cached as one ``.npz`` under the cache folder (default ``var/enhance_pairs``),
keyed by the settings, so a second run reuses them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

SKIMAGE_IMAGES = (  # colour photographs
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "stereo_motorcycle",
)
SKIMAGE_GREY_IMAGES = ("brick", "grass", "gravel", "camera")  # textures, used as grey RGB
MATPLOTLIB_IMAGES = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png")


@dataclass(frozen=True)
class PairSettings:
    """What decides the pair set (its hash names the cache file)."""

    crop: int = 64  # crop side in pixels
    crops_per_image: int = 2
    qualities: tuple[int, ...] = (3, 6)
    shift_px: int = 3  # the second frame is the crop moved by this many pixels (right and down)
    iframe_iters: int = 150  # fewer than the preset's 400, to keep the set cheap to make
    seed: int = 0

    def key(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class PairSet:
    """decoded, source: uint8 [N, S, S, 3]; content: int64 [N] (crop index); quality: int64 [N]."""

    decoded: np.ndarray
    source: np.ndarray
    content: np.ndarray
    quality: np.ndarray

    @property
    def n_contents(self) -> int:
        return int(self.content.max()) + 1 if len(self.content) else 0


def _rgb_u8(img: np.ndarray) -> np.ndarray | None:
    """An image as uint8 [H, W, 3] (grey repeated), or None for odd images."""
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] < 3:
        return None
    img = img[:, :, :3]
    if img.dtype != np.uint8:
        img = (np.clip(img.astype(np.float64), 0, 1) * 255).round().astype(np.uint8)
    return np.ascontiguousarray(img)


def source_images() -> list[tuple[str, np.ndarray]]:
    """(name, uint8 [H, W, 3]) for every bundled training photograph found (no downloads)."""
    import matplotlib.cbook
    import skimage.data

    out: list[tuple[str, np.ndarray]] = []
    for name in SKIMAGE_IMAGES + SKIMAGE_GREY_IMAGES:
        loader = getattr(skimage.data, name, None)
        if loader is None:
            continue
        try:
            img = loader()
        except Exception:  # an image that would need a download is skipped
            continue
        if isinstance(img, tuple):  # stereo pairs: (left, right, disparity)
            img = img[0]
        rgb = _rgb_u8(np.asarray(img))
        if rgb is not None:
            out.append((f"skimage.data.{name}", rgb))
    for name in MATPLOTLIB_IMAGES:
        from PIL import Image

        path = matplotlib.cbook.get_sample_data(name, asfileobj=False)
        with Image.open(str(path)) as im:
            rgb = _rgb_u8(np.asarray(im.convert("RGB")))
        if rgb is not None:
            out.append((f"matplotlib:{name}", rgb))
    return out


def make_pairs(
    settings: PairSettings,
    images: list[tuple[str, np.ndarray]] | None = None,
    log: Callable[[str], None] | None = None,
) -> PairSet:
    """Run the project's encoder on crops of ``images`` (default :func:`source_images`)."""
    from codec.config import CodecConfig
    from codec.gop import encode_gop_report

    imgs = source_images() if images is None else images
    rng = np.random.default_rng(settings.seed)
    s, d = settings.crop, settings.shift_px
    dec, src, cont, qual = [], [], [], []
    content = 0
    for name, img in imgs:
        h, w, _ = img.shape
        if h < s + d or w < s + d:
            continue
        for _ in range(settings.crops_per_image):
            y, x = int(rng.integers(0, h - s - d + 1)), int(rng.integers(0, w - s - d + 1))
            gop = np.stack([img[y : y + s, x : x + s], img[y + d : y + d + s, x + d : x + d + s]])
            for q in settings.qualities:
                cfg = CodecConfig.preset(
                    "fast", q, gop=2, seed=settings.seed, fit__iframe_iters=settings.iframe_iters
                )
                recon = encode_gop_report(gop, cfg).recon
                for f in range(2):
                    dec.append(recon[f])
                    src.append(gop[f])
                    cont.append(content)
                    qual.append(q)
            if log:
                log(f"{name}: crop {content} at ({x}, {y}) coded at qualities {settings.qualities}")
            content += 1
    return PairSet(
        decoded=np.stack(dec),
        source=np.stack(src),
        content=np.asarray(cont, dtype=np.int64),
        quality=np.asarray(qual, dtype=np.int64),
    )


def load_or_make_pairs(
    settings: PairSettings, cache_dir: Path, log: Callable[[str], None] | None = None
) -> PairSet:
    """The cached pair set for ``settings`` under ``cache_dir``, made (and cached) when missing."""
    path = cache_dir / f"pairs-{settings.key()}.npz"
    if path.exists():
        with np.load(path) as z:
            return PairSet(z["decoded"], z["source"], z["content"], z["quality"])
    pairs = make_pairs(settings, log=log)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **asdict(pairs))
    tmp.replace(path)
    return pairs
