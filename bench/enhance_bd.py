"""BD-rate of splatpack+enhance against plain splatpack on a clip, every enhancer byte counted.

One plain encode per quality (cached under ``--cache``) gives three curves from the same
Gaussians; the enhancer is a post-filter, so its per-GOP choice on the cached reconstruction is
exactly what ``encode_gop(..., enhance=...)`` would write:

- plain: the GOP payloads with an empty enhancer field (1 byte per GOP), decoded raw;
- base: the base network at the encoder's per-GOP strength only (``choose_enhancement`` in
  mode "base" on the same reconstruction: the ablation row "base network");
- on: what the encoder wrote (strength, plus the per-GOP modulation where D + lambda R pays);
- on_lambda0: the same with lambda 0 (a record is kept wherever it lowers the error at all, its
  bytes still counted): shows what the network can do regardless of its rate;
- filter: the per-GOP least-squares filter alone (mode "filter", GOP format 7; no network).

Rates are GOP payload bits per pixel (container header and index excluded, the same for all
three). Quality: PSNR (mean of per-frame), MS-SSIM (SSIM below 161 px), HaarPSI and DSS
(codec.perceptual); BD-rate on MS-SSIM and HaarPSI uses them in dB, ``-10 log10(1 - x)``.
Also: the enhancer's decode milliseconds per frame at this clip's size and at 720x528, and its
share of the encode time. Writes ``results.json`` and ``results.md`` into ``--out``.

    OMP_NUM_THREADS=1 .venv/bin/python bench/enhance_bd.py ../shared/data/carphone_pristine.mp4 \\
        --frames 10 --gop 10 --qualities 2,3,4,6 --out bench/results/enhance/carphone
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from codec.bitstream import write_varint
from codec.config import CodecConfig
from codec.enhance.adapt import choose_enhancement, run_network
from codec.enhance.weights import WEIGHTS_SHA256, load_enhancer
from codec.gop import encode_gop_report
from codec.metrics import bd_rate, clip_metrics, perceptual_metrics
from codec.video import iter_gops

VARIANTS = ("plain", "base", "on", "on_lambda0", "filter")


def _db(x: float) -> float:
    return -10.0 * math.log10(max(1.0 - x, 1e-10))


def _quality(orig: np.ndarray, out: np.ndarray) -> dict[str, Any]:
    m = clip_metrics(orig, out)
    p = perceptual_metrics(orig, out)
    return {
        "psnr_db": float(np.mean(m["psnr_db_per_frame"])),
        "ms_ssim": float(np.mean(m["ms_ssim_per_frame"])),
        "ms_ssim_is_ssim": m["ms_ssim_is_ssim"],
        "haarpsi": p["haarpsi"],
        "dss": p["dss"],
    }


def enhancer_ms_per_frame(h: int, w: int, repeats: int = 3) -> float:
    """Best of ``repeats`` timings of the shipped network on one uint8 frame of h x w."""
    net, _ = load_enhancer()
    frame = np.random.default_rng(0).integers(0, 256, size=(1, h, w, 3), dtype=np.uint8)
    m = np.zeros(32, dtype=np.float32)
    run_network(net, frame, 0.5, m)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run_network(net, frame, 0.5, m)
        best = min(best, time.perf_counter() - start)
    return best * 1000.0


def encode_plain(
    clip: Path, frames: int, gop: int, q: int, preset: str, cache: Path
) -> list[dict[str, Any]]:
    """Per GOP: source frames, plain payload, recon, encode seconds; cached under ``cache``
    (the enhancer is a post-filter, so its choices can be redone on these without re-encoding)."""
    path = cache / f"{clip.stem}-f{frames}-g{gop}-{preset}-q{q}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            n = int(z["n"])
            return [
                {
                    "source": z[f"source{i}"],
                    "recon": z[f"recon{i}"],
                    "payload": z[f"payload{i}"].tobytes(),
                    "seconds": float(z[f"seconds{i}"]),
                }
                for i in range(n)
            ]
    cfg = CodecConfig.preset(preset, q, gop=gop)  # type: ignore[arg-type]
    gops: list[dict[str, Any]] = []
    for _, gop_frames in iter_gops(clip, gop, frames):
        start = time.perf_counter()
        res = encode_gop_report(gop_frames, cfg)
        gops.append(
            {
                "source": gop_frames,
                "recon": res.recon,
                "payload": res.payload,
                "seconds": time.perf_counter() - start,
            }
        )
    cache.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {"n": np.asarray(len(gops))}
    for i, g in enumerate(gops):
        arrays[f"source{i}"] = g["source"]
        arrays[f"recon{i}"] = g["recon"]
        arrays[f"payload{i}"] = np.frombuffer(g["payload"], dtype=np.uint8)
        arrays[f"seconds{i}"] = np.asarray(g["seconds"])
    np.savez_compressed(path, **arrays)
    return gops


def filter_ms_per_frame(h: int, w: int, repeats: int = 3) -> float:
    """Best-of-``repeats`` milliseconds of the largest per-GOP filter (5x5 over 3 channels) on one
    h x w frame."""
    from codec.enhance import gopfilter

    frame = np.random.default_rng(0).integers(0, 256, (1, h, w, 3), dtype=np.uint8)
    coefs = gopfilter.identity(2)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        gopfilter.apply(frame, coefs, 2)
        best = min(best, time.perf_counter() - t0)
    return best * 1000.0


def run(
    clip: Path,
    frames: int,
    gop: int,
    qualities: list[int],
    preset: str,
    cache: Path,
    variants: tuple[str, ...] = VARIANTS,
) -> dict[str, Any]:
    variants = tuple(v for v in VARIANTS if v in variants or v == "plain")
    timed = "on" if "on" in variants else variants[-1]
    points: list[dict[str, Any]] = []
    for q in qualities:
        lam = CodecConfig.preset(preset, q).fit.pframe_rd_lambda  # type: ignore[arg-type]
        gops = encode_plain(clip, frames, gop, q, preset, cache)
        bytes_v = dict.fromkeys(variants, 0)
        outs: dict[str, list[np.ndarray]] = {v: [] for v in variants}
        encode_s = enhance_s = 0.0
        kinds: list[str] = []
        for g in gops:
            encode_s += g["seconds"]
            plain_bytes = len(g["payload"])  # its enhancer field is the 1-byte "none"
            bytes_v["plain"] += plain_bytes
            outs["plain"].append(g["recon"])
            for v in variants[1:]:
                mode, v_lam = ("on", 0.0) if v == "on_lambda0" else (v, lam)
                choice = choose_enhancement(g["source"], g["recon"], mode, v_lam)
                field = len(write_varint(len(choice.record))) + len(choice.record)
                bytes_v[v] += plain_bytes - 1 + field
                outs[v].append(choice.enhanced)
                if v == timed:  # the encoder's own choice: "on", else the variant asked for
                    enhance_s += choice.seconds
                    kinds.append(choice.kind)
        orig = np.concatenate([g["source"] for g in gops])
        n, h, w = orig.shape[:3]
        row: dict[str, Any] = {
            "quality": q,
            "rd_lambda": lam,
            "encode_seconds": round(encode_s, 1),
            "enhance_encode_seconds": round(enhance_s, 1),
            "gop_kinds": kinds,
        }
        for v in variants:
            row[v] = {"bpp": bytes_v[v] * 8 / (h * w * n), "bytes": bytes_v[v]}
            row[v].update(_quality(orig, np.concatenate(outs[v])))
        points.append(row)
        print(json.dumps(row), flush=True)
    out: dict[str, Any] = {
        "clip": str(clip),
        "frames": frames,
        "gop": gop,
        "preset": preset,
        "weights_sha256": WEIGHTS_SHA256,
        "points": points,
        "bd_rate": {},
        "enhancer_ms_per_frame": {
            f"{w}x{h}": round(enhancer_ms_per_frame(h, w), 1),
            "720x528": round(enhancer_ms_per_frame(528, 720), 1),
        },
        "filter_ms_per_frame_720x528": round(filter_ms_per_frame(528, 720), 1),
        "torch_threads": torch.get_num_threads(),
    }
    metrics = {"psnr_db": lambda x: x, "ms_ssim": _db, "haarpsi": _db}
    for v in variants[1:]:
        for name, f in metrics.items():
            try:
                a = [f(p["plain"][name]) for p in points]
                b = [f(p[v][name]) for p in points]
                val = bd_rate(
                    [p["plain"]["bpp"] for p in points], a, [p[v]["bpp"] for p in points], b
                )
            except (TypeError, ValueError) as exc:  # too few points, or a metric was None
                val = None
                print(f"BD-rate {v} {name}: {exc}")
            out["bd_rate"][f"{v}_vs_plain_{name}"] = None if val is None else round(val, 2)
    return out


def to_markdown(res: dict[str, Any]) -> str:
    lines = [
        f"clip {res['clip']}, {res['frames']} frames, GOP {res['gop']}, preset {res['preset']}",
        "",
        "| q | variant | bpp | PSNR dB | MS-SSIM | HaarPSI | DSS |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in res["points"]:
        for v in (v for v in VARIANTS if v in p):
            r = p[v]
            lines.append(
                f"| {p['quality']} | {v} | {r['bpp']:.4f} | {r['psnr_db']:.2f} | "
                f"{r['ms_ssim']:.4f} | {r['haarpsi']} | {r['dss']} |"
            )
    lines += ["", "| BD-rate | value % |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in res["bd_rate"].items()]
    lines += ["", f"enhancer decode ms/frame: {res['enhancer_ms_per_frame']}"]
    lines += [f"per-GOP filter (5x5x3) ms/frame at 720x528: {res['filter_ms_per_frame_720x528']}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("clip", type=Path)
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--gop", type=int, default=30)
    ap.add_argument("--qualities", default="2,3,4,6")
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cache", type=Path, default=Path("var/enhance_bench"))
    ap.add_argument("--encode-only", action="store_true", help="fill the encode cache, stop")
    ap.add_argument(
        "--variants",
        default=",".join(VARIANTS[1:]),
        help="enhanced variants to compare with plain (the network ones are slow at 720x528)",
    )
    args = ap.parse_args(argv)
    qualities = [int(q) for q in args.qualities.split(",")]
    if args.encode_only:
        for q in qualities:
            encode_plain(args.clip, args.frames, args.gop, q, args.preset, args.cache)
            print(f"q{q} encoded", flush=True)
        return 0
    variants = tuple(args.variants.split(","))
    res = run(args.clip, args.frames, args.gop, qualities, args.preset, args.cache, variants)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(res, indent=2))
    (args.out / "results.md").write_text(to_markdown(res))
    print(to_markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
