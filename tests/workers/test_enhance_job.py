"""The service's ``"enhance": true``: the flag reaches the codec, and verify/report/preview use the
enhanced output, with the raw Gaussian figures and the enhancer's share of the bytes beside them."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from codec.bitstream import GopHeader, pack_gop, unpack_gop_enhanced
from codec.config import CodecConfig
from codec.enhance.adapt import run_network
from codec.enhance.model import N_MOD, EnhanceNet
from codec.enhance.record import EnhancerRecord, encode_record
from codec.enhance.train import save_weights
from codec.enhance.weights import load_enhancer, model_tag
from codec.gop import decode_gop
from codec.video import iter_frames, read_frames
from infra.settings import Settings
from infra.storage import LocalStorage
from tests.workers.helpers import TINY_CODEC, WorkerEnv, make_video
from workers.assemble import AssembleStage, GopRecord, VerifyStage, build_report
from workers.gops import EncodeGopStage, plan_gops
from workers.pipeline import JobSpec, codec_config_dict

PREFIX = "jobs/enh/"


def test_the_job_flag_turns_the_enhancer_on() -> None:
    spec = JobSpec(
        id=__import__("uuid").uuid4(),
        input_uri="x",
        preset="fast",
        quality=2,
        gop=3,
        max_frames=None,
        output_prefix=PREFIX,
        enhance=True,
    )
    on = CodecConfig.from_dict(codec_config_dict(spec, Settings()))
    assert on.enhance == "filter"
    off = CodecConfig.from_dict(
        codec_config_dict(JobSpec(**{**spec.__dict__, "enhance": False}), Settings())
    )
    assert off.enhance == "off"


@pytest.fixture
def helpful_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[EnhanceNet, int]:
    torch.manual_seed(2)
    net = EnhanceNet()
    torch.nn.init.normal_(net.tail.weight, std=0.01)
    path = tmp_path / "enhancer.pt"
    sha = save_weights(net, path, {"note": "test"})
    monkeypatch.setattr("codec.enhance.weights.WEIGHTS_PATH", path)
    monkeypatch.setattr("codec.enhance.weights.WEIGHTS_SHA256", sha)
    return load_enhancer()[0], model_tag(sha)


def test_verify_and_report_use_the_enhanced_output(
    tmp_path: Path, helpful_weights: tuple[EnhanceNet, int]
) -> None:
    net, tag = helpful_weights
    src = make_video(tmp_path / "clip.mp4", n_frames=5)
    storage = LocalStorage(tmp_path / "store")
    config = CodecConfig.preset("fast", 1, enhance="on").with_overrides(gop=3, **TINY_CODEC)
    stage = EncodeGopStage(config=config.to_dict())
    records: list[GopRecord] = []
    record = encode_record(EnhancerRecord(tag, 90, 1, 16, tuple([2, -1] * (N_MOD // 2))))
    for spec in plan_gops(5, 3, PREFIX):
        r = stage.process(spec, read_frames(src, spec.first_frame, spec.n_frames), storage)
        # GOP 0 carries a given enhancer record (what the encoder writes when it pays)
        if spec.index == 0:
            header, frames, _ = unpack_gop_enhanced(storage.get_bytes(spec.key))
            head = GopHeader(header.height, header.width, header.n_frames, header.grid)
            storage.put_bytes(spec.key, pack_gop(head, frames, record))
        size = storage.size(spec.key)
        records.append(GopRecord(r.index, r.first_frame, r.n_frames, r.key, size, r.psnr_db, 0.1))
    gsv = tmp_path / "out" / "video.gsv"
    assemble = AssembleStage(
        width=48, height=32, fps=Fraction(10), gop=3, codec_params=config.to_compact()
    )
    size = assemble.process(records, 5, storage, gsv)
    preview = tmp_path / "out" / "preview.y4m"
    verify = VerifyStage(expected_frames=5, gop=3).process(gsv, src, preview)
    assert verify.gops_enhanced == 1 and verify.enhancer_bytes == len(record)
    assert verify.plain["psnr_db"] != pytest.approx(verify.psnr_db, abs=1e-9)

    # the preview is the enhanced output of GOP 0
    payload0 = storage.get_bytes(records[0].key)
    plain0 = decode_gop(payload0, enhance=False)
    rec = EnhancerRecord(tag, 90, 1, 16, tuple([2, -1] * (N_MOD // 2)))
    expected0 = run_network(net, plain0, rec.t, rec.modulation())
    shown = np.stack([f for _, f in zip(range(3), iter_frames(preview), strict=False)])
    np.testing.assert_array_equal(shown, expected0)
    assert not np.array_equal(shown, plain0)

    report = build_report(
        job_id="j",
        gsv_bytes=size,
        width=48,
        height=32,
        n_frames=5,
        gops=records,
        verify=verify,
        timings_s={},
        config=config.to_compact(),
        preset="fast",
        quality=1,
    )
    json.dumps(report)
    enh = report["enhance"]
    assert enh["requested"] == "on" and enh["gops_enhanced"] == 1
    assert enh["enhancer_bytes"] == len(record)
    assert enh["enhancer_share_of_bytes"] == pytest.approx(len(record) / size)
    assert enh["enhanced"]["psnr_db"] == report["psnr_db"]
    assert set(enh["plain"]) == {"psnr_db", "ms_ssim", "dss", "haarpsi"}
    for q in (enh["plain"], enh["enhanced"]):
        assert 0 < q["dss"] <= 1 and 0 < q["haarpsi"] <= 1


@pytest.mark.slow
def test_enhance_job_runs_end_to_end(ray_local: str, worker_env: WorkerEnv) -> None:
    runner = worker_env.runner()
    key = worker_env.upload_video(runner, n_frames=4)
    job_id = worker_env.add_job(key, gop=2, enhance=True)
    assert runner.run_once()
    job = worker_env.job(job_id)
    assert job.status.value == "succeeded", (job.error_code, job.error_message)
    report = job.report
    assert report["config"]["overrides"]["enhance"] == "filter"
    enh = report["enhance"]
    assert enh["requested"] == "filter" and 0 <= enh["gops_enhanced"] <= 2
    assert enh["enhancer_bytes"] >= 0 and 0 <= enh["enhancer_share_of_bytes"] < 1
    if enh["gops_enhanced"] == 0:  # nothing paid: the delivered output is the raw one
        assert enh["plain"]["psnr_db"] == pytest.approx(report["psnr_db"])
