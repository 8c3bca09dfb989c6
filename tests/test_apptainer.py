"""apptainer/runner.def and apptainer/vllm.def, built for real and run.

This Debian 12 host has no Apptainer: it runs in the tool image (docker/apptainer/Dockerfile,
``scripts/ci/build-apptainer-tool.sh``) as a non-root user, with the capabilities it needs.
The SIFs are built from the Docker images with ``scripts/apptainer-build.sh --source
docker-archive`` (``docker save``): the runner from docker/runner/Dockerfile, the server from
docker/vllm/Dockerfile on the CPU stand-in base (``scripts/ci/build-vllm-cpu-base.sh``), which
takes the place of the GPU image. Then: ``apptainer test``, ``apptainer inspect``, the runner
SIF scoring the oracle stand-in (simple_python at 1.0, results in a bound folder, the SIF
unchanged), and the server SIF serving the tiny random model until /health is 200. Last, the
runner and server blocks of apptainer/README.md run as written (doc_block); its build blocks are
in tests/test_apptainer_builds.py.

A missing engine, tool image or CPU base FAILS these tests with the command to run; they never
skip. SIFs are cached under <cache>/apptainer by image id (``BFCL_EXT_TEST_CACHE`` or
<repo>/.cache): the first run builds them (about 3 + 4 minutes on 2 CPUs), later runs take
about 2 minutes.
Timings are printed (``pytest -s``).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from bfcl_ext import __version__ as BFCL_EXT_VERSION
from bfcl_ext.provenance import sha256_file
from tests.support.doc_blocks import doc_block
from tests.support.docker_env import docker, run_docker
from tests.support.vllm_cpu import REPO_ROOT, free_port, save_in_hub_cache
from tests.support.waiting import answers_200, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1200)]

TOOL_IMAGE = os.environ.get("BFCL_EXT_APPTAINER_IMAGE", "bfcl-ext-local/apptainer:1.4")
LOCAL_PYTHON_BASE = "bfcl-ext-local/python:3.11-bookworm"
VLLM_CPU_BASE = os.environ.get("BFCL_EXT_VLLM_CPU_IMAGE", "bfcl-ext-local/vllm-cpu:0.32.0")
RUNNER_IMAGE = "bfcl-ext-runner:apptainer-test"
VLLM_IMAGE = "bfcl-ext-local/vllm-server:apptainer-test"
BUILD_TOOL = REPO_ROOT / "scripts" / "ci" / "build-apptainer-tool.sh"
BUILD_SIF = REPO_ROOT / "scripts" / "apptainer-build.sh"
TOOL_DOCKERFILE = REPO_ROOT / "docker" / "apptainer" / "Dockerfile"
RUNNER_DEF = REPO_ROOT / "apptainer" / "runner.def"
VLLM_DEF = REPO_ROOT / "apptainer" / "vllm.def"
CACHE = Path(os.environ.get("BFCL_EXT_TEST_CACHE") or REPO_ROOT / ".cache") / "apptainer"
BUILDER_UID = 1000  # the tool image's non-root user
HOME_IN_TOOL = "/home/builder"  # the tool user's home (its passwd entry), which Apptainer binds
BFCL_EVAL_VERSION = re.search(r"^bfcl-eval==(\S+)", (REPO_ROOT / "requirements" / "runner.lock").read_text(), re.M)[1]
MODEL = "org/smoke_model"
SERVED_NAME = "tiny-qwen2"
CPU_EXTRA_ARGS = "--dtype float32 --enforce-eager --kv-cache-memory-bytes 134217728"
HEALTHY_WITHIN_S = 300
# What Apptainer needs from Docker here (`--privileged` does not work on this engine); running a
# SIF also needs /dev/fuse, which the tool image's entrypoint hands to its user when started as root.
SECURITY = (
    "--cap-add", "SYS_ADMIN", "--security-opt", "seccomp=unconfined",
    "--security-opt", "apparmor=unconfined", "--security-opt", "systempaths=unconfined",
)  # fmt: skip
FUSE = ("--device", "/dev/fuse", "--user", "0")


def _measure(what: str, value: str) -> None:
    print(f"\n[apptainer] {what}: {value}", file=sys.stderr)


def _sections(definition: Path) -> dict[str, str]:
    """A definition file's header (under "") and its %sections, by name."""
    sections: dict[str, list[str]] = {"": []}
    current = ""
    for line in definition.read_text().splitlines():
        match = re.match(r"^%(\w+)\s*$", line)
        if match:
            current = match[1]
            assert current not in sections, f"{definition.name}: %{current} twice"
            sections[current] = []
        else:
            sections[current].append(line)
    return {name: "\n".join(lines) for name, lines in sections.items()}


def _owned_by_builder(path: Path) -> Path:
    """The tool image's user (uid 1000) must write here."""
    path.mkdir(parents=True, exist_ok=True)
    if os.getuid() == 0:
        os.chown(path, BUILDER_UID, BUILDER_UID)
    elif os.getuid() != BUILDER_UID:
        path.chmod(0o777)
    return path


# ---------------------------------------------------------------- static checks (no engine needed)


@pytest.mark.parametrize("definition", [RUNNER_DEF, VLLM_DEF], ids=lambda p: p.name)
def test_definition_takes_its_source_as_build_arguments(definition: Path) -> None:
    sections = _sections(definition)
    header = [line for line in sections[""].splitlines() if line.strip() and not line.startswith("#")]
    assert header == ["Bootstrap: {{ BOOTSTRAP }}", "From: {{ FROM }}"], header
    for name in ("arguments", "labels", "environment", "post", "runscript", "test", "help"):
        assert sections.get(name, "").strip(), f"{definition.name}: %{name} missing or empty"
    defaults = dict(
        line.strip().split("=", 1)
        for line in sections["arguments"].splitlines()
        if line.strip() and not line.strip().startswith("#")
    )
    assert defaults["BOOTSTRAP"] == "docker", "Bootstrap: docker (a registry) is the default"
    used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", definition.read_text()))
    assert used <= set(defaults), f"arguments without a default: {used - set(defaults)}"
    assert {"SOURCE_COMMIT", "IMAGE", "IMAGE_ID"} <= used


def _dry_run(*args: str) -> list[str]:
    done = subprocess.run(
        [str(BUILD_SIF), "--dry-run", *args], capture_output=True, text=True, check=False, timeout=60,
        env={k: v for k, v in os.environ.items() if k != "APPTAINER"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    command = [line for line in done.stdout.splitlines() if not line.startswith("#")]
    assert len(command) == 1, done.stdout
    return shlex.split(command[0])


def test_build_script_passes_source_commit_and_versions() -> None:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    runner = _dry_run("--runtime", "docker", "--source", "docker", "--from", "registry.example.org/t/runner:1",
                      str(RUNNER_DEF), "/tmp/runner.sif")  # fmt: skip
    args = [runner[i + 1] for i, word in enumerate(runner) if word == "--build-arg"]
    assert "BOOTSTRAP=docker" in args and "FROM=registry.example.org/t/runner:1" in args, runner
    assert "IMAGE=registry.example.org/t/runner:1" in args, runner
    commit = next(a.split("=", 1)[1] for a in args if a.startswith("SOURCE_COMMIT="))
    assert commit.removesuffix("-dirty") == head.stdout.strip()
    assert not any(a.startswith("BFCL_EXT_VERSION=") for a in args), "runner.def takes its versions from the image"
    assert runner[-2:] == ["/work/image.sif", "/work/runner.def"]

    server = _dry_run("--runtime", "docker", "--source", "docker-archive", "--from", str(TOOL_DOCKERFILE),
                      "--compression", "lz4", "--notest", "--build-arg", "SOURCE_COMMIT=abc",
                      str(VLLM_DEF), "/tmp/vllm.sif")  # fmt: skip
    args = [server[i + 1] for i, word in enumerate(server) if word == "--build-arg"]
    assert "BOOTSTRAP=docker-archive" in args and "FROM=/work/in/image.tar" in args, server
    assert f"BFCL_EXT_VERSION={BFCL_EXT_VERSION}" in args
    assert [a for a in args if a.startswith("SOURCE_COMMIT=")] == ["SOURCE_COMMIT=abc"], "the caller's value wins"
    assert "--notest" in server and server[server.index("--mksquashfs-args") + 1] == "-comp lz4"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--source", "oras", str(RUNNER_DEF), "x.sif"], "--source must be docker, docker-daemon or docker-archive"),
        (["--source", "docker", str(RUNNER_DEF), "x.sif"], "--source docker needs --from"),
        (["--source", "docker-archive", str(RUNNER_DEF), "x.img"], "must end in .sif"),
        (["--compression", "zip", str(RUNNER_DEF), "x.sif"], "--compression must be"),
        (["--source", "docker-archive", "apptainer/none.def", "x.sif"], "definition file not found"),
        ([str(RUNNER_DEF)], "give a definition file and an output .sif"),
    ],
)
def test_build_script_refuses_bad_arguments(args: list[str], message: str) -> None:
    done = subprocess.run([str(BUILD_SIF), *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False,
                          timeout=60)  # fmt: skip
    assert done.returncode == 2, done
    assert message in done.stderr, done.stderr


# ---------------------------------------------------------------- the tool image and the SIFs


@pytest.fixture(scope="module")
def tool_image() -> str:
    if run_docker("info", check=False, timeout=30).returncode != 0:
        pytest.fail("the docker engine does not answer: run scripts/ci/setup-docker.sh")
    if run_docker("image", "inspect", TOOL_IMAGE, check=False).returncode != 0:
        pytest.fail(f"the Apptainer tool image {TOOL_IMAGE} is missing: run {BUILD_TOOL.relative_to(REPO_ROOT)} "
                    "before the tests (about 20 s; needs deb.debian.org)")  # fmt: skip
    # Present: make sure it is the current Dockerfile's (a no-op when it is).
    t0 = time.monotonic()
    done = subprocess.run([str(BUILD_TOOL)], capture_output=True, text=True, check=False, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    _measure("tool image", f"{time.monotonic() - t0:.1f} s; {done.stdout.strip().splitlines()[-1]}")
    return TOOL_IMAGE


def _build_image(tag: str, dockerfile: Path, context: Path, build_args: Sequence[str]) -> str:
    t0 = time.monotonic()
    args = [a for pair in (("--build-arg", b) for b in build_args) for a in pair]
    run_docker("build", "--file", str(dockerfile), *args, "--tag", tag, str(context), timeout=900,
           env=dict(os.environ, DOCKER_BUILDKIT="1"))  # fmt: skip
    image_id = run_docker("image", "inspect", "-f", "{{.Id}}", tag).stdout.strip()
    _measure(f"docker build {tag}", f"{time.monotonic() - t0:.1f} s ({image_id[:19]})")
    return image_id


def _build_sif(kind: str, definition: Path, image: str, image_id: str, *options: str) -> Path:
    """The SIF of ``image``, cached under CACHE by image id (older ones of this kind removed)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    sif = CACHE / f"{kind}-{image_id.removeprefix('sha256:')[:16]}.sif"
    for old in CACHE.glob(f"{kind}-*.sif*"):
        if old.name not in (sif.name, f"{sif.name}.stamp"):
            old.unlink()
    t0 = time.monotonic()
    done = subprocess.run(
        [str(BUILD_SIF), "--runtime", "docker", "--source", "docker-archive", "--from", image,
         # A fixed value per image: the SIF stays cached across commits of unrelated files.
         "--build-arg", f"SOURCE_COMMIT=test-{image_id.removeprefix('sha256:')[:16]}",
         *options, str(definition), str(sif)],
        capture_output=True, text=True, check=False, timeout=900,
        env={k: v for k, v in os.environ.items() if k != "APPTAINER"},
    )  # fmt: skip
    assert done.returncode == 0, f"building {sif.name} failed:\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
    assert sif.is_file() and sif.with_name(sif.name + ".stamp").is_file()
    took = time.monotonic() - t0
    cached = "up to date" in done.stderr
    _measure(f"{kind}.sif", f"{sif.stat().st_size / 1e6:.0f} MB, {'cached' if cached else 'built'} in {took:.1f} s")
    return sif


@dataclass
class Sif:
    path: Path
    image_id: str


@pytest.fixture(scope="module")
def runner_image(tool_image: str) -> str:
    """RUNNER_IMAGE built from docker/runner/Dockerfile; its id."""
    return _build_image(RUNNER_IMAGE, REPO_ROOT / "docker" / "runner" / "Dockerfile", REPO_ROOT,
                        [f"PYTHON_BASE={LOCAL_PYTHON_BASE}"])  # fmt: skip


@pytest.fixture(scope="module")
def vllm_image(tool_image: str) -> str:
    """VLLM_IMAGE built from docker/vllm/Dockerfile on the CPU base; its id."""
    if run_docker("image", "inspect", VLLM_CPU_BASE, check=False).returncode != 0:
        pytest.fail(f"the CPU base {VLLM_CPU_BASE} is missing: run scripts/ci/build-vllm-cpu-base.sh before the "
                    "tests (about 3 minutes, then cached)")  # fmt: skip
    dockerfile = REPO_ROOT / "docker" / "vllm" / "Dockerfile"
    return _build_image(VLLM_IMAGE, dockerfile, dockerfile.parent, [f"VLLM_BASE={VLLM_CPU_BASE}"])


@pytest.fixture(scope="module")
def runner_sif(runner_image: str) -> Sif:
    # The default compression (gzip), and the definition's %test run during the build.
    return Sif(_build_sif("runner", RUNNER_DEF, RUNNER_IMAGE, runner_image), runner_image)


@pytest.fixture(scope="module")
def vllm_sif(vllm_image: str) -> Sif:
    # 3.8 GB of image: lz4 squashes it in 20 s where gzip takes 5 minutes on 2 CPUs; %test runs
    # below, with `apptainer test`.
    return Sif(_build_sif("vllm", VLLM_DEF, VLLM_IMAGE, vllm_image, "--compression", "lz4", "--notest"), vllm_image)


def apptainer(
    *args: str,
    volumes: Mapping[Path, str],
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """``apptainer ARGS`` in the tool image, as its non-root user, on the host's network; ``env``
    is the environment Apptainer itself sees (the "host" environment of the container)."""
    name = f"bfcl-ext-apptainer-{uuid.uuid4().hex[:10]}"
    command = [docker(), "run", "--rm", "--name", name, "--network", "host", *SECURITY, *FUSE]
    for source, target in volumes.items():
        command += ["--volume", f"{source}:{target}"]
    for key in env or {}:
        command += ["--env", key]  # the value from the client's environment: never in argv
    command += [TOOL_IMAGE, "apptainer", *args]
    client_env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "BFCL_EXT_", "SERVE_"))}
    client_env.update(env or {})
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, env=client_env)
    finally:
        subprocess.run([docker(), "rm", "-f", name], capture_output=True, check=False)
    if check and done.returncode != 0:
        pytest.fail(f"apptainer {' '.join(args)} -> {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def _labels(sif: Path) -> dict[str, str]:
    done = apptainer("inspect", "--json", "/sif/image.sif", volumes={sif: "/sif/image.sif:ro"})
    return json.loads(done.stdout)["data"]["attributes"]["labels"]


# ---------------------------------------------------------------- runner.sif


def test_runner_sif_self_test_and_help(runner_sif: Sif) -> None:
    volumes = {runner_sif.path: "/sif/runner.sif:ro"}
    t0 = time.monotonic()
    done = apptainer("test", "/sif/runner.sif", volumes=volumes)
    _measure("apptainer test runner.sif", f"{time.monotonic() - t0:.1f} s")
    assert f"bfcl-ext {BFCL_EXT_VERSION}" in done.stdout, done.stdout
    assert f"bfcl-eval {BFCL_EVAL_VERSION}: data at" in done.stdout, done.stdout
    assert "runner.sif: self-test passed" in done.stdout, done.stdout
    # No arguments: bfcl-ext's help, as the container's CMD gives.
    done = apptainer("run", "/sif/runner.sif", volumes=volumes)
    assert done.stdout.startswith("usage: bfcl-ext"), done.stdout
    done = apptainer("run-help", "/sif/runner.sif", volumes=volumes)
    assert "--bind" in done.stdout and "/results" in done.stdout, done.stdout


def test_runner_sif_labels(runner_sif: Sif) -> None:
    labels = _labels(runner_sif.path)
    assert labels["org.bfcl-ext.version"] == BFCL_EXT_VERSION, labels
    assert labels["org.bfcl-ext.bfcl-eval-version"] == BFCL_EVAL_VERSION, labels
    assert labels["org.bfcl-ext.source-commit"] == f"test-{runner_sif.image_id.removeprefix('sha256:')[:16]}"
    assert labels["org.bfcl-ext.image"] == RUNNER_IMAGE, labels
    assert labels["org.bfcl-ext.image-id"] == runner_sif.image_id, labels
    assert labels["org.label-schema.usage.singularity.deffile.bootstrap"] == "docker-archive", labels


def test_runner_sif_scores_the_standin_into_a_bound_folder(runner_sif: Sif, standin_factory, tmp_path: Path) -> None:
    standin = standin_factory("--served-model-name", MODEL)
    results = _owned_by_builder(tmp_path / "results")
    before = sha256_file(runner_sif.path)
    t0 = time.monotonic()
    # --containall: nothing of the host but what is passed (--env) and bound; no --writable-tmpfs.
    # The SIF is mounted read-write into the tool container: only Apptainer keeps it unchanged.
    done = apptainer(
        "run", "--containall", "--bind", "/work/results:/results",
        "--env", f"VLLM_ENDPOINT=127.0.0.1,VLLM_PORT={standin.port}",
        "/sif/runner.sif", "run", "--model", MODEL, "--test-category", "simple_python",
        volumes={runner_sif.path: "/sif/runner.sif", results: "/work/results"}, check=False,
    )  # fmt: skip
    _measure("runner.sif scores simple_python (400 entries)", f"{time.monotonic() - t0:.1f} s")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((results / "summary.json").read_text())
    assert summary["categories"]["simple_python"] == {"accuracy": 1.0, "correct": 400, "total": 400}, summary
    assert summary["mode"] == "skip", "skip mode is the image's default"
    assert summary["endpoint"] == f"http://127.0.0.1:{standin.port}/v1"
    assert (results / "manifest.json").is_file() and (results / "score").is_dir()
    # The manifest names the SIF it ran from, with the labels that name the Docker image it was built
    # from (the SIF's own path is not bound inside, so only a host-side hash could add its digest).
    runner_image = json.loads((results / "manifest.json").read_text())["images"]["runner"]
    assert runner_image["reference"] == "/sif/runner.sif" and runner_image["digest"] is None, runner_image
    assert runner_image["labels"]["org.bfcl-ext.image-id"] == runner_sif.image_id, runner_image
    assert (results / "summary.json").stat().st_uid == BUILDER_UID, "written by the user who ran apptainer"
    assert sha256_file(runner_sif.path) == before, "the SIF changed"


def test_runner_sif_takes_settings_from_the_host_environment(runner_sif: Sif, standin_factory, tmp_path: Path) -> None:
    """Without --containall the host's VLLM_* / BFCL_EXT_* reach bfcl-ext, although the Docker image
    sets VLLM_ENDPOINT=vllm (an image variable would otherwise hide the host's)."""
    standin = standin_factory("--served-model-name", MODEL)
    results = _owned_by_builder(tmp_path / "out")
    done = apptainer(
        "run", "--bind", "/work/out:/work/out", "/sif/runner.sif", "run",
        volumes={runner_sif.path: "/sif/runner.sif:ro", results: "/work/out"},
        env={"VLLM_ENDPOINT": "127.0.0.1", "VLLM_PORT": str(standin.port), "BFCL_EXT_MODEL": MODEL,
             "BFCL_EXT_TEST_CATEGORY": "simple_python", "BFCL_EXT_LIMIT": "5", "BFCL_EXT_OUTPUT_DIR": "/work/out"},
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((results / "summary.json").read_text())
    assert summary["categories"]["simple_python"]["accuracy"] == 1.0, summary
    assert summary["endpoint"] == f"http://127.0.0.1:{standin.port}/v1"


DOCS_HOST, DOCS_PORT, DOCS_MODEL = "gpu-node-17", 8000, "my-served-model"  # apptainer/README.md's runner block


def test_the_readmes_runner_block_runs_as_written(runner_sif: Sif, standin_factory, tmp_path: Path) -> None:
    """apptainer/README.md's "The runner" block, unchanged, in a folder holding runner.sif, with a
    Hugging Face cache in $HOME (the tool user's, /home/builder); the stand-in plays my-served-model
    at gpu-node-17:8000 (the tool container's /etc/hosts names this machine gpu-node-17; Apptainer
    binds that file)."""
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", DOCS_PORT)) != 0, f"port {DOCS_PORT} is taken: the block needs it"
    standin_factory("--served-model-name", DOCS_MODEL, port=DOCS_PORT)
    work = _owned_by_builder(tmp_path / "work")
    (work / "home" / ".cache" / "huggingface").mkdir(parents=True)
    name = f"bfcl-ext-apptainer-docs-{uuid.uuid4().hex[:10]}"
    command = [
        docker(), "run", "--rm", "--name", name, "--network", "host", "--add-host", f"{DOCS_HOST}:127.0.0.1",
        *SECURITY, *FUSE, "--volume", f"{work}:/work", "--volume", f"{runner_sif.path}:/work/runner.sif:ro",
        # The entrypoint sets HOME from the tool user's passwd entry: the home is bound there.
        "--volume", f"{work / 'home'}:{HOME_IN_TOOL}", "--workdir", "/work",
        TOOL_IMAGE, "bash", "-e", "-x", "-c", doc_block("apptainer/README.md", "run-runner"),
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    finally:
        subprocess.run([docker(), "rm", "-f", name], capture_output=True, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((work / "results" / "summary.json").read_text())
    assert summary["endpoint"] == f"http://{DOCS_HOST}:{DOCS_PORT}/v1" and summary["model"] == DOCS_MODEL, summary
    assert summary["categories"]["simple_python"] == {"accuracy": 1.0, "correct": 400, "total": 400}, summary


def test_runner_sif_without_a_bound_results_folder_says_how(runner_sif: Sif) -> None:
    done = apptainer(
        "run", "--containall", "/sif/runner.sif", "run", "--model", MODEL, "--test-category", "simple_python",
        volumes={runner_sif.path: "/sif/runner.sif:ro"}, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done
    assert '--bind "$PWD/results:/results"' in done.stderr, done.stderr
    assert "not writable" in done.stderr, done.stderr


# ---------------------------------------------------------------- the host's Python stays out

TRAP = "HOST-PYTHON-TRAP"
# What a host's Python environment would do inside the SIF (each points into the bound home).
HOST_PYTHON_ENV = {
    "PYTHONPATH": f"{HOME_IN_TOOL}/pythonpath",
    "PYTHONHOME": f"{HOME_IN_TOOL}/bogus-python-home",
    "PYTHONSTARTUP": f"{HOME_IN_TOOL}/startup.py",
    "PYTHONUSERBASE": f"{HOME_IN_TOOL}/userbase",
    "PYTHONOPTIMIZE": "2",
    "BASH_ENV": f"{HOME_IN_TOOL}/bashenv.sh",  # sourced by bash scripts (the vLLM entrypoint) if it arrived
    "ENV": f"{HOME_IN_TOOL}/bashenv.sh",  # the same for sh in POSIX mode
}
# sys.path, the user site and the Python variables, as a Python in the SIF sees them.
PROBE = ("import json, os, site, sys; print('PROBE', json.dumps({'path': sys.path, 'user_site': site.ENABLE_USER_SITE, "
         "'env': {k: v for k, v in os.environ.items() if k.startswith('PYTHON')}}))")  # fmt: skip


def _host_python_traps(tmp_path: Path) -> Path:
    """A home folder (bound on the tool user's home) holding the Python a host may have: a package
    folder on PYTHONPATH, a PYTHONSTARTUP script, an empty PYTHONHOME, a PYTHONUSERBASE, packages,
    usercustomize and a .pth in ~/.local, and packages in the working folder. Each one, imported,
    prints TRAP and leaves a file in markers/."""
    home = _owned_by_builder(tmp_path / "home")
    _owned_by_builder(home / "markers")
    (home / "bogus-python-home").mkdir()

    def trap(path: Path, name: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"import sys\nsys.stderr.write('{TRAP} {name}\\n')\n"
                        f"open('{HOME_IN_TOOL}/markers/{name}', 'w').close()\n")  # fmt: skip

    trap(home / "startup.py", "PYTHONSTARTUP")
    (home / "bashenv.sh").write_text(f"echo '{TRAP} BASH_ENV' >&2\n: > {HOME_IN_TOOL}/markers/BASH_ENV\n"
                                     f"export PYTHONPATH={HOME_IN_TOOL}/pythonpath\n")  # fmt: skip
    for module in ("bfcl_ext/__init__.py", "vllm/__init__.py", "sitecustomize.py", "usercustomize.py"):
        trap(home / "pythonpath" / module, f"PYTHONPATH-{module.split('/')[0].removesuffix('.py')}")
    for module in ("bfcl_ext/__init__.py", "vllm/__init__.py", "shlex.py", "json.py"):
        trap(home / module, f"cwd-{module.split('/')[0].removesuffix('.py')}")
    for base, name in ((home / ".local", "local"), (home / "userbase", "PYTHONUSERBASE")):
        for version in ("3.11", "3.12"):
            site = base / "lib" / f"python{version}" / "site-packages"
            for module in ("bfcl_ext/__init__.py", "vllm/__init__.py", "usercustomize.py"):
                trap(site / module, f"{name}-{version}-{module.split('/')[0].removesuffix('.py')}")
            (site / "zz-host.pth").write_text(f"import os; open('{HOME_IN_TOOL}/markers/{name}-{version}-pth', 'w')\n")
    for path in home.rglob("*"):
        path.chmod(0o777 if path.is_dir() else 0o644)
    return home


def _probes(output: str) -> list[dict]:
    """The three PROBE lines of _host_python_checks."""
    probes = [json.loads(line.removeprefix("PROBE ")) for line in output.splitlines() if line.startswith("PROBE ")]
    assert len(probes) == 3, output[-3000:]
    return probes


def _probe_path(output: str) -> list[str]:
    return json.loads(output.split("PROBE ", 1)[1].splitlines()[0])["path"]


def _assert_nothing_of_the_host(home: Path, done: subprocess.CompletedProcess[str], *probes: dict) -> None:
    output = done.stdout + done.stderr
    assert TRAP not in output, output[-3000:]
    assert sorted(p.name for p in (home / "markers").iterdir()) == [], output[-3000:]
    for probe in probes:
        assert not [p for p in probe["path"] if p in ("", ".") or p.startswith(HOME_IN_TOOL)], probe
        assert probe["user_site"] is False, probe
        assert not set(HOST_PYTHON_ENV) & set(probe["env"]), probe
        assert probe["env"].get("PYTHONNOUSERSITE") == "1", probe


def _host_python_checks(python: str) -> str:
    """A shell script for `apptainer exec`: an interactive interpreter (it reads PYTHONSTARTUP), an
    import from the working folder, and PROBE from PATH's python3 and from the image's /usr/bin/python3
    (a system Python: it alone would read a user site; the images' venvs never do), once more without
    PYTHONUSERBASE (so that ~/.local is the user site)."""
    return (
        "set -eu\n"
        "python3 -i </dev/null\n"
        f"python3 -c {shlex.quote(python)}\n"
        f"python3 -c {shlex.quote(PROBE)}\n"
        f"/usr/bin/python3 -c {shlex.quote(PROBE)}\n"
        f"env -u PYTHONUSERBASE /usr/bin/python3 -c {shlex.quote(PROBE)}\n"
    )


def test_runner_sif_ignores_the_host_python_environment(runner_sif: Sif, tmp_path: Path) -> None:
    """PYTHONPATH, PYTHONHOME, PYTHONSTARTUP, PYTHONUSERBASE, ~/.local (the home is bound) and the
    working folder of the host never reach the SIF's Python: not through the runscript, nor exec."""
    home = _host_python_traps(tmp_path)
    volumes = {runner_sif.path: "/sif/runner.sif:ro", home: HOME_IN_TOOL}
    done = apptainer("run", "--pwd", HOME_IN_TOOL, "/sif/runner.sif", "--help", volumes=volumes,
                     env=HOST_PYTHON_ENV, check=False)  # fmt: skip
    assert done.returncode == 0 and done.stdout.startswith("usage: bfcl-ext"), done.stdout[-2000:] + done.stderr[-3000:]
    _assert_nothing_of_the_host(home, done)
    check = "import bfcl_ext; print('bfcl_ext from', bfcl_ext.__file__)"
    done = apptainer("exec", "--pwd", HOME_IN_TOOL, "/sif/runner.sif", "sh", "-c", _host_python_checks(check),
                     volumes=volumes, env=HOST_PYTHON_ENV, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "bfcl_ext from /opt/bfcl-ext/lib/" in done.stdout, done.stdout
    _assert_nothing_of_the_host(home, done, *_probes(done.stdout))
    # Asked for on purpose (--env), a PYTHONPATH still applies.
    done = apptainer("exec", "--env", f"PYTHONPATH={HOST_PYTHON_ENV['PYTHONPATH']}", "/sif/runner.sif",
                     "python3", "-c", PROBE, volumes=volumes, check=False)  # fmt: skip
    assert done.returncode == 0 and HOST_PYTHON_ENV["PYTHONPATH"] in _probe_path(done.stdout), done
    assert "PYTHONPATH-sitecustomize" in done.stderr, done.stderr


# ---------------------------------------------------------------- vllm.sif


def test_vllm_sif_self_test_and_labels(vllm_sif: Sif) -> None:
    t0 = time.monotonic()
    done = apptainer("test", "/sif/vllm.sif", volumes={vllm_sif.path: "/sif/vllm.sif:ro"})
    _measure("apptainer test vllm.sif", f"{time.monotonic() - t0:.1f} s")
    assert "vllm 0.32.0" in done.stdout and "vllm.sif: self-test passed" in done.stdout, done.stdout
    labels = _labels(vllm_sif.path)
    assert labels["org.bfcl-ext.vllm-version"].startswith("0.32.0"), labels
    assert labels["org.bfcl-ext.version"] == BFCL_EXT_VERSION, labels
    assert labels["org.bfcl-ext.image-id"] == vllm_sif.image_id, labels
    assert labels["org.bfcl-ext.source-commit"].startswith("test-"), labels


def test_vllm_sif_ignores_the_host_python_environment(vllm_sif: Sif, tmp_path: Path) -> None:
    """As for the runner: the entrypoint's own python3 calls (settings, the facts file) and the command
    it execs see nothing of the host's Python. The official image has vLLM in its system Python, which
    would read ~/.local: /usr/bin/python3 stands for it here (the CPU base's vLLM is in a venv)."""
    home = _host_python_traps(tmp_path)
    volumes = {vllm_sif.path: "/sif/vllm.sif:ro", home: HOME_IN_TOOL}
    check = "import vllm; print('vllm from', vllm.__file__)"
    serve = {"SERVE_MODEL": "/models/none", "SERVE_COMMAND": f"python3 -c {shlex.quote(check)}",
             "SERVE_EXTRA_ARGS": "--seed 1", "SERVE_FACTS_FILE": f"{HOME_IN_TOOL}/facts.json"}  # fmt: skip
    done = apptainer("run", "--pwd", HOME_IN_TOOL, "/sif/vllm.sif", volumes=volumes,
                     env={**HOST_PYTHON_ENV, **serve}, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "vllm from /" in done.stdout and "vllm-entrypoint: exec python3 -c" in done.stderr, done
    facts = json.loads((home / "facts.json").read_text())
    assert facts["packages"]["vllm-cpu"].startswith("0.32.0"), facts
    _assert_nothing_of_the_host(home, done)
    done = apptainer("exec", "--pwd", HOME_IN_TOOL, "/sif/vllm.sif", "sh", "-c", _host_python_checks(check),
                     volumes=volumes, env=HOST_PYTHON_ENV, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "vllm from /" in done.stdout, done.stdout
    _assert_nothing_of_the_host(home, done, *_probes(done.stdout))


def _http(url: str, key: str | None = None, timeout: float = 10) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def _until_200(url: str, container: str, within_s: float, what: str, poll_s: float = 1.0) -> float:
    """Wait for ``url`` to answer 200 while ``container`` runs; fail with its log if it stops first
    or ``within_s`` passes. Returns the seconds it took."""

    def stopped() -> str | None:
        state = run_docker("inspect", "-f", "{{.State.Running}} {{.State.ExitCode}}", container).stdout.split()
        return None if state[0] == "true" else f"exited ({state[1]})"

    def logs() -> str:
        done = run_docker("logs", "--tail", "80", container, check=False)
        return done.stdout + done.stderr

    t0 = time.monotonic()
    wait_until(answers_200(url), within=within_s, poll=poll_s, what=f"{what}: {url}", gone=stopped, explain=logs)
    return time.monotonic() - t0


@pytest.fixture
def served_vllm_sif(vllm_sif: Sif, tiny_model_dir: Path) -> Iterator[tuple[str, int, str]]:
    """`apptainer run vllm.sif` in a detached tool container, configured as the server image is:
    SERVE_* and VLLM_API_KEY from the environment (no --containall: the host's pass through)."""
    for p in [tiny_model_dir, *tiny_model_dir.iterdir()]:
        assert p.stat().st_mode & 0o004, f"{p} is not world-readable: uid 1000 cannot read it"
    name = f"bfcl-ext-apptainer-vllm-{uuid.uuid4().hex[:10]}"
    port = free_port()
    key = "sk-test-" + secrets.token_hex(16)
    env = {
        "SERVE_MODEL": "/models/tiny", "SERVE_SERVED_MODEL_NAME": SERVED_NAME, "SERVE_HOST": "127.0.0.1",
        "SERVE_PORT": str(port), "SERVE_MAX_MODEL_LEN": "2048", "SERVE_EXTRA_ARGS": CPU_EXTRA_ARGS,
        "VLLM_API_KEY": key, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
        # A runner's setting in a shared environment: the entrypoint must unset it for vLLM.
        "VLLM_PORT": "8000",
    }  # fmt: skip
    command = [
        "run", "--detach", "--name", name, "--network", "host", "--shm-size", "1g", *SECURITY, *FUSE,
        "--volume", f"{vllm_sif.path}:/sif/vllm.sif:ro", "--volume", f"{tiny_model_dir}:/models/tiny:ro",
        *[a for k in env for a in ("--env", k)],
        TOOL_IMAGE, "apptainer", "run", "--bind", "/models/tiny:/models/tiny:ro", "/sif/vllm.sif",
    ]  # fmt: skip
    try:
        run_docker(*command, env=dict(os.environ, **env))
        yield name, port, key
    finally:
        run_docker("rm", "--force", name, check=False)


def test_vllm_sif_serves_the_tiny_model(served_vllm_sif: tuple[str, int, str]) -> None:
    name, port, key = served_vllm_sif
    took = _until_200(f"http://127.0.0.1:{port}/health", name, HEALTHY_WITHIN_S, "apptainer run vllm.sif")
    _measure("apptainer run vllm.sif -> /health 200", f"{took:.1f} s")
    status, body = _http(f"http://127.0.0.1:{port}/v1/models", key=key)
    assert status == 200 and [m["id"] for m in json.loads(body)["data"]] == [SERVED_NAME], body
    assert _http(f"http://127.0.0.1:{port}/v1/models")[0] == 401, "VLLM_API_KEY from the environment is required"
    logs = run_docker("logs", name, check=False)
    output = logs.stdout + logs.stderr
    assert "vllm-entrypoint: exec vllm serve /models/tiny" in output, output[-3000:]
    assert key not in output, "the key must not be printed"
    # SIGTERM (docker stop) reaches vLLM through Apptainer: a prompt, clean stop.
    t0 = time.monotonic()
    run_docker("stop", "--time", "30", name, timeout=60)
    stopped_s = time.monotonic() - t0
    _measure("docker stop -> vLLM gone", f"{stopped_s:.1f} s")
    assert stopped_s < 15
    assert run_docker("inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip() in ("0", "143")


# ---------------------------------------------------------------- apptainer/README.md's server block, as written

DOCS_SERVER_MODEL = "Qwen/Qwen2.5-7B-Instruct"
DOCS_SERVER_FLAGS = "[more vLLM flags]"  # run-server's placeholder: the CPU's flags here
DOCS_SERVER_PORT = 8000


def _chown_to_builder(top: Path) -> None:
    """Everything under ``top`` the tool user's (uid 1000), or open to it."""
    for path in [top, *top.rglob("*")]:
        if os.getuid() == 0:
            os.chown(path, BUILDER_UID, BUILDER_UID, follow_symlinks=False)
        elif not path.is_symlink():
            path.chmod(0o777 if path.is_dir() else 0o666)


def test_the_readmes_server_block_runs_as_written(vllm_sif: Sif, tiny_model_dir: Path, tmp_path: Path) -> None:
    """apptainer/README.md's "The server" block in a folder holding vllm.sif, as the tool user
    (USER=builder): the tiny CPU model saved as Qwen/Qwen2.5-7B-Instruct in the Hugging Face cache
    /scratch/builder/hf-cache (hub layout, tokenizer included), the CPU's flags in place of
    "[more vLLM flags]", HF_HUB_OFFLINE=1 (no hub here). No GPU: `--nv` finds no driver and goes on.
    The key is literally `...`: without it 401, with `Bearer ...` the model list."""
    block = doc_block("apptainer/README.md", "run-server")
    assert block.count(DOCS_SERVER_FLAGS) == 1, block
    block = block.replace(DOCS_SERVER_FLAGS, f"{CPU_EXTRA_ARGS} --max-model-len 2048")
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", DOCS_SERVER_PORT)) != 0, f"port {DOCS_SERVER_PORT} is taken"
    scratch = tmp_path / "scratch"
    hf_cache = scratch / "builder" / "hf-cache"
    save_in_hub_cache(tiny_model_dir, hf_cache / "hub", DOCS_SERVER_MODEL)
    _chown_to_builder(scratch)  # the runscript takes /hf-cache as HF_HOME when it is writable
    work = _owned_by_builder(tmp_path / "work")
    name = f"bfcl-ext-apptainer-docs-{uuid.uuid4().hex[:10]}"
    env = {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    command = [
        "run", "--detach", "--name", name, "--network", "host", "--shm-size", "1g", *SECURITY, *FUSE,
        "--volume", f"{work}:/work", "--volume", f"{vllm_sif.path}:/work/vllm.sif:ro",
        "--volume", f"{scratch}:/scratch", "--workdir", "/work", *[a for k in env for a in ("--env", k)],
        TOOL_IMAGE, "bash", "-e", "-x", "-c", block,
    ]  # fmt: skip
    try:
        run_docker(*command, env=dict(os.environ, **env))
        base = f"http://127.0.0.1:{DOCS_SERVER_PORT}"
        took = _until_200(f"{base}/health", name, HEALTHY_WITHIN_S, "the server block")
        _measure("the README's server block -> /health 200", f"{took:.1f} s")
        assert _http(f"{base}/v1/models")[0] == 401, "VLLM_API_KEY=... must be required"
        assert _http(f"{base}/v1/models", key="wrong")[0] == 401
        status, body = _http(f"{base}/v1/models", key="...")
        assert status == 200 and [m["id"] for m in json.loads(body)["data"]] == [DOCS_SERVER_MODEL], body
        logs = run_docker("logs", name, check=False)
        output = logs.stdout + logs.stderr
        assert f"vllm-entrypoint: exec vllm serve {DOCS_SERVER_MODEL}" in output, output[-3000:]
        # bash -x: the block ran with --nv and $USER (the tool user) expanded. Without an NVIDIA
        # driver Apptainer 1.4 binds nothing and says nothing about it (only --verbose does).
        trace = "apptainer run --nv --bind /scratch/builder/hf-cache:/hf-cache vllm.sif --dtype float32"
        assert trace in logs.stderr, logs.stderr[-3000:]
    finally:
        run_docker("rm", "--force", name, check=False)
