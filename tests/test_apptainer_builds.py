"""apptainer/README.md's build blocks, run as written: the four scripts/apptainer-build.sh lines
(ghcr.io swapped for a local registry the runner image is pushed to) and the by-hand
``apptainer build``. Apart from tests/test_apptainer.py (whose images, tool and helpers these use)
so that a second worker builds these SIFs while the first runs the cached ones: they are never
cached, since building them is what is tested (about 10 minutes on 2 CPUs).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bfcl_ext import __version__ as BFCL_EXT_VERSION
from tests.support.doc_blocks import commands, doc_block
from tests.support.docker_env import docker, run_docker
from tests.support.vllm_cpu import REPO_ROOT, free_port
from tests.test_apptainer import (
    BFCL_EVAL_VERSION,
    BUILD_TOOL,
    RUNNER_IMAGE,
    SECURITY,
    TOOL_IMAGE,
    VLLM_IMAGE,
    _labels,
    _measure,
    _owned_by_builder,
    _until_200,
)
from tests import test_apptainer

# test_apptainer's module fixtures, made again for this module (the images build from cache)
tool_image = test_apptainer.tool_image
runner_image = test_apptainer.runner_image
vllm_image = test_apptainer.vllm_image

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1200)]

DOCS_REGISTRY_IMAGE = "ghcr.io/ORG/bfcl-ext-runner:0.1.0"  # build-script's registry image (ORG: a placeholder)
DOCS_LOCAL_TAGS = ("bfcl-ext-runner:local", "bfcl-ext-vllm:local")  # the definitions' default FROM


def _git_head() -> str:
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return done.stdout.strip()


@contextlib.contextmanager
def _tagged(tag: str, image: str) -> Iterator[str]:
    """``image`` also tagged ``tag`` for a while (the tag's previous image tagged back after, so
    that the shared engine's ``:local`` tags stay as they were); yields the id."""
    before = run_docker("image", "inspect", "-f", "{{.Id}}", tag, check=False)
    previous = before.stdout.strip() if before.returncode == 0 else None
    run_docker("tag", image, tag)
    try:
        yield run_docker("image", "inspect", "-f", "{{.Id}}", tag).stdout.strip()
    finally:
        if previous:
            run_docker("tag", previous, tag, check=False)
        else:
            run_docker("rmi", tag, check=False)


@contextlib.contextmanager
def _local_registry(folder: Path) -> Iterator[str]:
    """A Docker registry on this machine's localhost (Debian's docker-registry, in the tool image,
    storing in ``folder``): it stands in for ghcr.io, which this machine cannot reach. Docker and
    Apptainer both talk plain HTTP to a registry on localhost. Yields HOST:PORT."""
    port = free_port()
    storage = _owned_by_builder(folder / "storage")
    config = folder / "registry.yml"
    config.write_text("version: 0.1\nlog:\n  level: warn\n"
                      "storage:\n  filesystem:\n    rootdirectory: /var/lib/registry\n"
                      f"http:\n  addr: 127.0.0.1:{port}\n")  # fmt: skip
    config.chmod(0o644)
    name = f"bfcl-ext-apptainer-registry-{uuid.uuid4().hex[:10]}"
    started = run_docker("run", "--detach", "--name", name, "--network", "host",
                         "--volume", f"{config}:/etc/docker/registry/test.yml:ro",
                         "--volume", f"{storage}:/var/lib/registry",
                         TOOL_IMAGE, "docker-registry", "serve", "/etc/docker/registry/test.yml",
                         check=False)  # fmt: skip
    try:
        if started.returncode != 0:
            pytest.fail(f"docker-registry did not start in {TOOL_IMAGE} (rebuild it: {BUILD_TOOL.name}):\n"
                        f"{started.stderr[-2000:]}")  # fmt: skip
        _until_200(f"http://127.0.0.1:{port}/v2/", name, 30, "the local registry", poll_s=0.5)
        yield f"localhost:{port}"
    finally:
        run_docker("rm", "--force", name, check=False)


@pytest.mark.timeout(2400)  # 10 minutes here on 2 CPUs, 16 under a load of 7
def test_the_readmes_build_lines_run_as_written(runner_image: str, vllm_image: str, tmp_path: Path) -> None:
    """apptainer/README.md's four scripts/apptainer-build.sh lines, one after another, each SIF
    checked (labels, %test) before the next line overwrites it. The folder they run in has this
    checkout's scripts/ and apptainer/ (symlinks), so the SIFs and the tar are not written into the
    checkout. Swapped for what cannot exist here: ghcr.io/ORG becomes a local registry the runner
    image was pushed to; bfcl-ext-runner:local and bfcl-ext-vllm:local are the images this module
    builds (the vLLM one on the CPU base). BFCL_EXT_APPTAINER_COMPRESSION=lz4 in the environment:
    gzip (the default, built by the runner_sif fixture) takes about 8 minutes per server SIF here."""
    block = doc_block("apptainer/README.md", "build-script")
    lines = commands(block)
    assert len(lines) == 4 and block.count(DOCS_REGISTRY_IMAGE) == 1, block
    work = tmp_path / "work"
    work.mkdir()
    for name in ("scripts", "apptainer"):
        (work / name).symlink_to(REPO_ROOT / name)
    env = {k: v for k, v in os.environ.items() if k != "APPTAINER"}
    env["BFCL_EXT_APPTAINER_COMPRESSION"] = "lz4"
    with contextlib.ExitStack() as stack:
        registry = stack.enter_context(_local_registry(tmp_path / "registry"))
        pushed = f"{registry}/org/bfcl-ext-runner:0.1.0"
        run_docker("tag", RUNNER_IMAGE, pushed)
        stack.callback(run_docker, "rmi", pushed, check=False)
        t0 = time.monotonic()
        run_docker("push", pushed, timeout=900)
        _measure(f"docker push {pushed}", f"{time.monotonic() - t0:.1f} s")
        runner_local = stack.enter_context(_tagged(DOCS_LOCAL_TAGS[0], RUNNER_IMAGE))
        vllm_local = stack.enter_context(_tagged(DOCS_LOCAL_TAGS[1], VLLM_IMAGE))
        assert (runner_local, vllm_local) == (runner_image, vllm_image)
        # (output, org.bfcl-ext.image, org.bfcl-ext.image-id, bootstrap) each line must give
        expected = [
            ("runner.sif", pushed, "unknown", "docker"),
            ("runner.sif", DOCS_LOCAL_TAGS[0], runner_image, "docker-daemon"),
            ("vllm.sif", DOCS_LOCAL_TAGS[1], vllm_image, "docker-archive"),
            ("vllm.sif", "vllm-image.tar", "unknown", "docker-archive"),
        ]
        try:
            for line, (output, image, image_id, bootstrap) in zip(lines, expected, strict=True):
                if "vllm-image.tar" in line:  # the reader's `docker save` of the server image
                    t0 = time.monotonic()
                    run_docker("save", "-o", str(work / "vllm-image.tar"), DOCS_LOCAL_TAGS[1], timeout=900)
                    _measure("docker save vllm-image.tar", f"{time.monotonic() - t0:.1f} s")
                line = line.replace(DOCS_REGISTRY_IMAGE, pushed)
                heads = {_git_head()}  # others may commit in this checkout meanwhile
                t0 = time.monotonic()
                done = subprocess.run(["bash", "-e", "-x", "-c", line], cwd=work, env=env, capture_output=True,
                                      text=True, timeout=1200, check=False)  # fmt: skip
                _measure(line, f"{time.monotonic() - t0:.1f} s")
                output_text = done.stdout + done.stderr
                assert done.returncode == 0, f"{line}\n{output_text[-5000:]}"
                kind = output.removesuffix(".sif")
                assert f"{kind}.sif: self-test passed" in output_text, f"%test did not run: {output_text[-3000:]}"
                assert (work / output).is_file() and (work / f"{output}.stamp").is_file(), output_text[-3000:]
                labels = _labels(work / output)
                assert labels["org.bfcl-ext.image"] == image and labels["org.bfcl-ext.image-id"] == image_id, labels
                assert labels["org.label-schema.usage.singularity.deffile.bootstrap"] == bootstrap, labels
                heads.add(_git_head())
                assert labels["org.bfcl-ext.source-commit"].removesuffix("-dirty") in heads, (heads, labels)
                assert labels["org.bfcl-ext.version"] == BFCL_EXT_VERSION, labels
                if kind == "runner":
                    assert labels["org.bfcl-ext.bfcl-eval-version"] == BFCL_EVAL_VERSION, labels
                else:
                    assert labels["org.bfcl-ext.vllm-version"].startswith("0.32.0"), labels
        finally:
            for big in ("runner.sif", "vllm.sif", "vllm-image.tar"):
                (work / big).unlink(missing_ok=True)


def test_the_readmes_by_hand_build_runs_as_written(runner_image: str, tmp_path: Path) -> None:
    """apptainer/README.md's `apptainer build ... runner.sif apptainer/runner.def`, unchanged, with
    Apptainer installed (the tool image, as its user) in a folder holding the runner.tar a reader
    made with `docker save`, this checkout's apptainer/ and its .git (read-only: `git rev-parse HEAD`
    names the commit). APPTAINER_TMPDIR / APPTAINER_CACHEDIR point into that folder."""
    block = doc_block("apptainer/README.md", "build-by-hand")
    git_dir = REPO_ROOT / ".git"
    assert git_dir.is_dir(), f"{git_dir}: the test binds a checkout's .git folder"
    work = _owned_by_builder(tmp_path / "work")
    _owned_by_builder(work / "tmp")
    t0 = time.monotonic()
    run_docker("save", "-o", str(work / "runner.tar"), RUNNER_IMAGE, timeout=600)
    (work / "runner.tar").chmod(0o644)
    _measure("docker save runner.tar", f"{time.monotonic() - t0:.1f} s")
    name = f"bfcl-ext-apptainer-docs-{uuid.uuid4().hex[:10]}"
    heads = {_git_head()}  # others may commit in this checkout meanwhile
    command = [
        docker(), "run", "--rm", "--name", name, *SECURITY,
        "--volume", f"{work}:/work", "--volume", f"{REPO_ROOT / 'apptainer'}:/work/apptainer:ro",
        "--volume", f"{git_dir}:/work/.git:ro", "--workdir", "/work",
        "--env", "APPTAINER_TMPDIR=/work/tmp", "--env", "APPTAINER_CACHEDIR=/work/tmp/cache",
        # The checkout belongs to another user than the tool's: git would call it dubious.
        "--env", "GIT_CONFIG_COUNT=1", "--env", "GIT_CONFIG_KEY_0=safe.directory", "--env", "GIT_CONFIG_VALUE_0=*",
        TOOL_IMAGE, "bash", "-e", "-x", "-c", block,
    ]  # fmt: skip
    t0 = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    finally:
        subprocess.run([docker(), "rm", "-f", name], capture_output=True, check=False)
    _measure("apptainer build runner.sif by hand", f"{time.monotonic() - t0:.1f} s")
    output = done.stdout + done.stderr
    try:
        assert done.returncode == 0, output[-5000:]
        assert "runner.sif: self-test passed" in output, f"%test did not run: {output[-3000:]}"
        labels = _labels(work / "runner.sif")
        assert labels["org.bfcl-ext.source-commit"] in {*heads, _git_head()}, (heads, labels)
        assert labels["org.label-schema.usage.singularity.deffile.bootstrap"] == "docker-archive", labels
        assert labels["org.bfcl-ext.version"] == BFCL_EXT_VERSION, labels
        assert labels["org.bfcl-ext.bfcl-eval-version"] == BFCL_EVAL_VERSION, labels
    finally:
        for big in ("runner.sif", "runner.tar"):
            (work / big).unlink(missing_ok=True)
