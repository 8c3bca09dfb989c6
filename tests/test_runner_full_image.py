"""The runner image's two flavours, built by compose and run for real.

* full (``WITH_MEMORY_VECTOR=1``, tagged ``bfcl-ext-runner:local-full``): the whole leaderboard,
  memory_vector included (CPU torch, sentence-transformers). It scores memory_vector against the
  stand-in (a second container from the same image, on an internal network: nothing outside is
  reachable), with a tiny embedding model mounted read-only as the Hugging Face cache, a
  read-only root filesystem and user 1000, as compose runs it.
* default (``bfcl-ext-runner:local``): refuses memory_vector at once, naming the full install.

Both are built through compose (``docker compose build runner``), as a user picks the flavour,
offline from the wheelhouse (``scripts/build-wheelhouse.sh --full``, run by scripts/test.sh):
the first build takes a few minutes, later ones are BuildKit's cache (seconds). A missing engine,
base image or wheelhouse FAILS these tests with the command to run; they never skip. Build times,
sizes and the run's wall time are printed (``pytest -s``).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.support.docker_env import (
    REPO_ROOT,
    compose_command,
    docker_environment,
    engine,
    ensure_engine,
    image_id,
    image_size,
    run_docker,
)
from tests.support.tiny_embedding import HUB_REPO_ID, make_tiny_embedding_cache

pytestmark = pytest.mark.docker

TAG = "local"
FULL_IMAGE = f"bfcl-ext-runner:{TAG}-full"
DEFAULT_IMAGE = f"bfcl-ext-runner:{TAG}"
WHEELHOUSE = REPO_ROOT / "docker" / "wheelhouse"
SERVED_NAME = "smoke-oracle"
# The CPU build of torch and sentence-transformers add about 1 GB; PyPI's CUDA build would add several.
FULL_OVER_DEFAULT_BYTES = (0.5e9, 1.5e9)


def _measure(what: str, value: str) -> None:
    print(f"\n[runner-full] {what}: {value}", file=sys.stderr)


def _flavour_env(with_memory_vector: str) -> dict[str, str]:
    """compose's environment for one flavour; set here, so neither the caller's environment nor a
    ./.env picks another flavour or tag."""
    return docker_environment({"WITH_MEMORY_VECTOR": with_memory_vector, "BFCL_EXT_IMAGE_TAG": TAG})


def _compose_build(with_memory_vector: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    command = [*compose_command(), "-f", "compose.yaml", "-p", "bfclflavour", "build", "runner"]
    done = subprocess.run(command, cwd=REPO_ROOT, env=_flavour_env(with_memory_vector), capture_output=True,
                          text=True, timeout=1800, check=False)
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(command)} (WITH_MEMORY_VECTOR={with_memory_vector!r}) -> {done.returncode}\n"
                    f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def _build(name: str, with_memory_vector: str) -> str:
    t0 = time.monotonic()
    _compose_build(with_memory_vector)
    _measure(f"{name} build (compose build runner)", f"{time.monotonic() - t0:.1f} s")
    return image_id(name)


@pytest.fixture(scope="module")
def full_image() -> str:
    ensure_engine()
    if not list(WHEELHOUSE.glob("torch-2.13.0+cpu-*.whl")):
        pytest.fail("docker/wheelhouse/ lacks requirements/full.lock's wheels (torch 2.13.0+cpu): run "
                    "scripts/build-wheelhouse.sh --full (scripts/test.sh does)")
    built = _build(FULL_IMAGE, "1")
    assert engine().images.get(FULL_IMAGE).labels.get("io.bfcl-ext.memory-vector") == "1"
    return built


@pytest.fixture(scope="module")
def default_image() -> str:
    ensure_engine()
    built = _build(DEFAULT_IMAGE, "")
    assert engine().images.get(DEFAULT_IMAGE).labels.get("io.bfcl-ext.memory-vector") == "0"
    return built


def test_full_image_adds_cpu_torch_only(full_image: str, default_image: str) -> None:
    full, default = image_size(FULL_IMAGE), image_size(DEFAULT_IMAGE)
    _measure("image sizes", f"default {default / 1e9:.2f} GB, full {full / 1e9:.2f} GB "
                            f"(+{(full - default) / 1e9:.2f} GB)")
    low, high = FULL_OVER_DEFAULT_BYTES
    assert low < full - default < high, f"full image {full} B, default {default} B"
    done = run_docker("run", "--rm", "--network", "none", "--entrypoint", "sh", FULL_IMAGE, "-c",
                      "cat /opt/bfcl-ext/flavour; python -c 'import torch; print(torch.__version__)'")
    assert done.stdout.split() == ["full", "2.13.0+cpu"]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_full_image_scores_memory_vector_read_only_as_user_1000(full_image: str, tmp_path: Path) -> None:
    hf_home = tmp_path / "hf"
    snapshot = make_tiny_embedding_cache(hf_home / "hub")
    results = tmp_path / "results"
    results.mkdir()
    os.chown(results, 1000, 1000)  # the runner image's user; never root
    suffix = uuid.uuid4().hex[:8]
    network, standin, runner = f"bfclfull-{suffix}", f"bfclfull-standin-{suffix}", f"bfclfull-runner-{suffix}"
    engine().networks.create(network, driver="bridge", internal=True)  # no way out: nothing is downloaded
    try:
        engine().containers.run(FULL_IMAGE, ["standin", "--host", "0.0.0.0", "--port", "8000",
                                "--served-model-name", SERVED_NAME], name=standin, network=network,
                                read_only=True, tmpfs={"/tmp": ""}, detach=True)
        t0 = time.monotonic()
        done = run_docker(
            "run", "--name", runner, "--network", network, "--read-only", "--tmpfs", "/tmp", "--user", "1000:1000",
            "-v", f"{hf_home}:/hf-cache:ro", "-v", f"{results}:/results",
            "-e", f"VLLM_ENDPOINT={standin}", "-e", "VLLM_PORT=8000", "-e", "BFCL_EXT_SERVER_FACTS=",
            "-e", "BFCL_EXT_WAIT_TIMEOUT=120", "-e", f"BFCL_EXT_RUNNER_IMAGE={full_image}",
            FULL_IMAGE, "run", "--skip-vllm", "--model", SERVED_NAME, "--test-category", "memory_vector",
            "--limit", "2", check=False, timeout=900,
        )  # fmt: skip
        _measure("memory_vector --limit 2 in the container", f"{time.monotonic() - t0:.1f} s")
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

        summary = json.loads((results / "summary.json").read_text())
        assert summary["categories"] == {"memory_vector": {"accuracy": 1.0, "correct": 2, "total": 2}}
        assert (results / "summary.json").stat().st_uid == 1000
        manifest = json.loads((results / "manifest.json").read_text())
        model = manifest["tools"]["embedding_model"]
        in_container = Path("/hf-cache") / snapshot.relative_to(hf_home)
        assert model["repo_id"] == HUB_REPO_ID
        assert model["path"] == str(in_container)
        assert model["revision"] == snapshot.name
        for name in ("model.safetensors", "tokenizer.json", "modules.json"):
            assert model["files"][name] == _sha256(snapshot / name), name
        assert manifest["images"]["runner"]["digest"] == full_image

        attrs = engine().containers.get(runner).attrs
        assert attrs["HostConfig"]["ReadonlyRootfs"] is True
        assert attrs["Config"]["User"] == "1000:1000"
        mounts = {mount["Destination"]: mount for mount in attrs["Mounts"]}
        assert mounts["/hf-cache"]["RW"] is False
    finally:
        for name in (runner, standin):
            for container in engine().containers.list(all=True, filters={"name": f"^{name}$"}):
                container.remove(force=True)
        engine().networks.get(network).remove()


def test_default_image_refuses_memory_vector_naming_the_full_install(default_image: str) -> None:
    done = run_docker("run", "--rm", "--network", "none", "--read-only", "--tmpfs", "/tmp", DEFAULT_IMAGE,
                      "run", "--skip-vllm", "--model", SERVED_NAME, "--test-category", "memory_vector",
                      check=False, timeout=120)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("bfcl-ext: error:") and "memory_vector" in lines[0], lines[0]
    assert "scripts/install.sh --full" in lines[0] and "WITH_MEMORY_VECTOR=1" in lines[0], lines[0]


def test_compose_refuses_a_tag_that_is_not_the_flavour(full_image: str) -> None:
    """WITH_MEMORY_VECTOR=0 is not empty: compose would tag the default image ``-full``; the build says so."""
    done = _compose_build("0", check=False)
    assert done.returncode != 0
    assert "set WITH_MEMORY_VECTOR=1 for the full flavour, or leave it unset" in done.stdout + done.stderr
    assert image_id(FULL_IMAGE) == full_image  # still the full image
