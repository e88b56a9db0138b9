"""How much can any post-filter restore of splatpack's decoded frames? (issue 9: why the enhancer
does not pay). Design data only: images bundled in scikit-image and matplotlib, never shared/data.

Three measurements, all on frames the current encoder made with the ``fast`` preset's own
settings (not the 150-iteration shortcut of the shipped training pairs):

1. **pairs**: crops (``--crop`` px, ``--crops-per-image`` per image) of every bundled image,
   each coded as a 2-frame GOP (the crop, then the crop moved 3 px) at ``--qualities``; images
   are split into a training and a held-out set by name;
2. **global linear**: one least-squares 5x5 filter (per output channel, over the three input
   channels, plus an offset; codec.enhance.gopfilter) fitted on all training pairs of a
   quality, scored on the held-out pairs: the best any fixed linear post-filter can do;
3. **network** (``--cnn-steps`` > 0): the shipped architecture (``codec.enhance.model``) trained
   by ``codec.enhance.train.train`` on the training pairs, scored on both sets (base network,
   t from each frame's PSNR, no modulation, no side information);
4. **per-GOP linear**: 20-frame pans over six large bundled images coded as one GOP, and a
   least-squares 3x3 / 5x5 / 5x5x3-channel filter fitted on that GOP itself (what an encoder
   could send; coefficients quantised to 1/512 around the identity; their cost is *not*
   counted here: bench/enhance_gop_filter.py counts it).

    OMP_NUM_THREADS=1 .venv/bin/python bench/enhance_headroom.py --out bench/results/enhance_headroom.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from codec.config import CodecConfig  # noqa: E402
from codec.enhance import gopfilter  # noqa: E402
from codec.enhance.data import PairSet, _rgb_u8, source_images  # noqa: E402
from codec.gop import encode_gop_report  # noqa: E402

EXTRA_GREY = ("coins", "moon", "page", "text", "cell", "clock", "colorwheel")  # also bundled
HELD_OUT = ("skimage.data.astronaut", "skimage.data.coffee", "skimage.data.grass", "clock")
CROSS_5X5 = 2  # gopfilter.SHAPES index of the 5x5 filter over all three channels
PANS = ("hubble_deep_field", "retina", "astronaut", "rocket", "stereo_motorcycle", "coffee")


def _images() -> list[tuple[str, np.ndarray]]:
    import skimage.data

    imgs = source_images()
    for n in EXTRA_GREY:
        rgb = _rgb_u8(np.asarray(getattr(skimage.data, n)()))
        if rgb is not None:
            imgs.append((n, rgb))
    return imgs


def make_pairs(crop: int, per: int, qualities: list[int]) -> tuple[PairSet, np.ndarray]:
    """(pairs, image name per pair) with the preset's own settings."""
    rng = np.random.default_rng(0)
    dec, src, cont, qual, names = [], [], [], [], []
    c, shift = 0, 3
    for name, img in _images():
        h, w, _ = img.shape
        if h < crop + shift or w < crop + shift:
            continue
        for _ in range(per):
            y = int(rng.integers(0, h - crop - shift + 1))
            x = int(rng.integers(0, w - crop - shift + 1))
            gop = np.stack(
                [
                    img[y : y + crop, x : x + crop],
                    img[y + shift : y + shift + crop, x + shift : x + shift + crop],
                ]
            )
            for q in qualities:
                rec = encode_gop_report(gop, CodecConfig.preset("fast", q, gop=2, seed=0)).recon
                for f in range(2):
                    dec.append(rec[f])
                    src.append(gop[f])
                    cont.append(c)
                    qual.append(q)
                    names.append(name)
            c += 1
    pairs = PairSet(np.stack(dec), np.stack(src), np.asarray(cont), np.asarray(qual))
    return pairs, np.asarray(names)


def _fitted(
    dec_u8: np.ndarray, src_u8: np.ndarray, shape: int, step_bits: int | None
) -> np.ndarray:
    """The least-squares filter of ``shape`` (codec.enhance.gopfilter), quantised at 2**-step_bits
    around the identity when ``step_bits`` is given."""
    coefs = gopfilter.Fit(dec_u8, src_u8).coefs(shape)
    if step_bits is None:
        return coefs
    return gopfilter.dequantise(gopfilter.quantise(coefs, shape, step_bits), shape, step_bits)


def _gain_db(dec_u8: np.ndarray, src_u8: np.ndarray, out: np.ndarray) -> float:
    e0 = float(((dec_u8.astype(np.float64) - src_u8) ** 2).mean())
    e1 = float(((out.astype(np.float64) - src_u8) ** 2).mean())
    return 10.0 * math.log10(e0 / e1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--crop", type=int, default=96)
    p.add_argument("--crops-per-image", type=int, default=4)
    p.add_argument("--qualities", default="2,4,6")
    p.add_argument("--cnn-steps", type=int, default=2000)
    p.add_argument("--pan-quality", type=int, default=4)
    p.add_argument("--out", type=Path, default=Path("bench/results/enhance_headroom.json"))
    args = p.parse_args(argv)
    quals = [int(q) for q in args.qualities.split(",")]
    result: dict[str, Any] = {"global_linear": {}, "network": {}, "per_gop_linear": {}}
    t0 = time.perf_counter()
    pairs, names = make_pairs(args.crop, args.crops_per_image, quals)
    hold = np.isin(names, HELD_OUT)
    print(
        f"{len(names)} pairs ({int(hold.sum())} held out) in {time.perf_counter() - t0:.0f} s",
        flush=True,
    )

    for q in quals:
        tr, ho = (~hold) & (pairs.quality == q), hold & (pairs.quality == q)
        coefs = _fitted(pairs.decoded[tr], pairs.source[tr], CROSS_5X5, None)
        g_tr = _gain_db(
            pairs.decoded[tr],
            pairs.source[tr],
            gopfilter.apply(pairs.decoded[tr], coefs, CROSS_5X5),
        )
        g_ho = _gain_db(
            pairs.decoded[ho],
            pairs.source[ho],
            gopfilter.apply(pairs.decoded[ho], coefs, CROSS_5X5),
        )
        result["global_linear"][q] = {"train_db": g_tr, "held_out_db": g_ho}
        print(
            f"q{q} global 5x5x3 linear: train {g_tr:+.3f} dB, held out {g_ho:+.3f} dB", flush=True
        )

    if args.cnn_steps > 0:
        import torch

        from codec.enhance import train as T

        torch.set_num_threads(1)

        def sub(m: np.ndarray) -> PairSet:
            return PairSet(
                pairs.decoded[m],
                pairs.source[m],
                np.unique(pairs.content[m], return_inverse=True)[1],
                pairs.quality[m],
            )

        res = T.train(sub(~hold), T.TrainConfig(steps=args.cnn_steps, batch=16, patch=64))
        for q in quals:
            row = {}
            for label, m in (("train", ~hold), ("held_out", hold)):
                before, after = T.held_out_gain_db(res.model, sub(m & (pairs.quality == q)))
                row[f"{label}_db"] = after - before
            result["network"][q] = row
            print(
                f"q{q} network ({args.cnn_steps} steps): train {row['train_db']:+.3f} dB, held out {row['held_out_db']:+.3f} dB",
                flush=True,
            )

    import skimage.data

    for name in PANS:
        img = _rgb_u8(
            np.asarray(
                getattr(skimage.data, name)()
                if name != "stereo_motorcycle"
                else skimage.data.stereo_motorcycle()[0]
            )
        )
        assert img is not None
        hh, ww, _ = img.shape
        seq = np.stack(
            [
                img[(hh - 144) // 2 + i : (hh - 144) // 2 + i + 144, 20 + 2 * i : 20 + 2 * i + 176]
                for i in range(20)
            ]
        )
        enc = encode_gop_report(
            seq, CodecConfig.preset("fast", args.pan_quality, gop=len(seq), seed=0)
        )
        pan: dict[str, float] = {"payload_bytes": len(enc.payload)}
        for shape, (k, cross) in enumerate(gopfilter.SHAPES):
            coefs = _fitted(enc.recon, seq, shape, 9)
            pan[f"{k}x{k}{'x3' if cross else ''}_db"] = _gain_db(
                enc.recon, seq, gopfilter.apply(enc.recon, coefs, shape)
            )
        result["per_gop_linear"][name] = pan
        print(
            f"pan {name} q{args.pan_quality} ({len(enc.payload)} B): "
            + ", ".join(f"{k} {v:+.3f}" for k, v in pan.items() if k.endswith("_db")),
            flush=True,
        )

    record = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "seconds": time.perf_counter() - t0,
        **result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
