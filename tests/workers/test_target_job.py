"""A job with a quality target runs end to end on the real runner (Postgres, local Ray): the
report shows the target, what each GOP reached and the search's cost; an unreachable target
is reported, and the job still succeeds."""

from __future__ import annotations

import uuid

import pytest

from codec.config import CodecConfig
from infra.models import JobStatus
from infra.settings import Settings
from tests.workers.helpers import TINY_CODEC, WorkerEnv, started_markers
from workers.pipeline import JobError, JobSpec, codec_config_dict


def spec(**fields: object) -> JobSpec:
    base: dict[str, object] = {
        "id": uuid.uuid4(),
        "input_uri": "x",
        "preset": "fast",
        "quality": 3,
        "gop": 2,
        "max_frames": None,
        "output_prefix": "jobs/t/",
    }
    return JobSpec(**{**base, **fields})  # type: ignore[arg-type]


def test_the_job_target_reaches_the_codec_config() -> None:
    cfg = CodecConfig.from_dict(codec_config_dict(spec(target_psnr=36.5), Settings()))
    assert cfg.target_psnr == 36.5 and cfg.target_msssim is None
    assert CodecConfig.from_dict(codec_config_dict(spec(), Settings())).target_psnr is None
    with pytest.raises(JobError, match="target_psnr=500"):  # a row the API would not write
        codec_config_dict(spec(target_psnr=500.0), Settings())


@pytest.mark.slow
def test_target_jobs_run_end_to_end(ray_local: str, worker_env: WorkerEnv) -> None:
    runner = worker_env.runner()
    key = worker_env.upload_video(runner, n_frames=4)
    unreachable = worker_env.add_job(key, gop=2, target_psnr=90.0)
    reachable = worker_env.add_job(key, gop=2, quality=5, target_msssim=0.6)
    assert runner.run_once() and runner.run_once()

    job = worker_env.job(unreachable)
    assert job.status.value == "succeeded", (job.error_code, job.error_message)
    target = job.report["target"]
    assert job.report["config"]["overrides"]["target_psnr"] == 90.0
    assert target["metric"] == "psnr" and target["target"] == 90.0
    assert target["gops"] == 2 and target["gops_unreachable"] == 2 and target["hit_rate"] == 0
    assert [g["gop"] for g in target["per_gop"]] == [0, 1]
    for gop in target["per_gop"]:
        assert gop["status"] == "unreachable" and gop["reached"] < 90
        assert 10.0 in [t["quality"] for t in gop["trials"]]  # the top level was tried
    assert target["trial_encodes"] == sum(g["n_trials"] for g in target["per_gop"])
    assert target["search_seconds"] > 0

    job = worker_env.job(reachable)
    assert job.status.value == "succeeded", (job.error_code, job.error_message)
    target = job.report["target"]
    assert target["metric"] == "msssim" and target["label"] == "SSIM"  # 48x32 frames
    for gop in target["per_gop"]:
        # a low target: met by the lowest level tried, at most one trial per level
        assert gop["status"] in ("in_band", "above_band") and gop["reached"] >= 0.6
        assert len({t["quality"] for t in gop["trials"]}) == gop["n_trials"]


@pytest.mark.slow
def test_a_resumed_target_job_reports_the_gops_of_the_dead_runner(
    ray_local: str, worker_env: WorkerEnv
) -> None:
    """GOP 0's search was done by a runner that died: its report comes from job_gops.target."""
    runner = worker_env.runner()
    job_id = worker_env.add_job(
        worker_env.upload_video(runner, n_frames=4), gop=2, target_psnr=90.0
    )
    config = CodecConfig.preset("fast", 1).with_overrides(gop=2, target_psnr=90.0, **TINY_CODEC)
    done0 = worker_env.leave_gop0_of_dead_runner(runner, job_id, config.to_dict())
    assert done0.target is not None and done0.target["status"] == "unreachable"
    assert runner.run_once()
    job = worker_env.job(job_id)
    assert job.status == JobStatus.succeeded, (job.error_code, job.error_message)
    assert not started_markers(worker_env.fault_dir, 0)  # GOP 0 was not searched again
    per_gop = job.report["target"]["per_gop"]
    assert [g["gop"] for g in per_gop] == [0, 1]
    assert per_gop[0]["trials"] == done0.target["trials"]
    assert job.report["target"]["gops_unreachable"] == 2
