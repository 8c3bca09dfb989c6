"""slurm/: the job scripts on a real SLURM cluster (scripts/ci/setup-slurm.sh), with the oracle stand-in
as the server and the venv's bfcl-ext as the runner; the docs' submit command runs a real vLLM (the
CPU build) on the tiny model instead.

The cluster is started once per session (about 2 s; apt-get install the first time) and stopped at
the end. If SLURM cannot be installed or started, these tests fail: they never skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bfcl_ext.provenance import sha256_file
from tests.support.doc_blocks import doc_block
from tests.support.slurm_cluster import (
    BFCL_EXT_BIN,
    REPO_ROOT,
    SETUP_SCRIPT,
    SLURM_DIR,
    FirstRequestWatch,
    SlurmCluster,
    assert_server_gone,
    free_port,
    job_logs,
    read_kv,
    standin_command,
    standin_pids,
    start_cluster,
    stop_cluster,
    summary,
)
from tests.support.vllm_cpu import vllm_env, vllm_python
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slurm
TIMINGS: dict[str, dict[str, float | None]] = {}


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    started = time.monotonic()
    cluster = start_cluster(tmp_path_factory.mktemp("slurm-state"))
    TIMINGS["cluster"] = {"setup_s": round(time.monotonic() - started, 2)}
    yield cluster
    cluster.cancel_leftovers()
    stopped = stop_cluster(cluster)
    assert stopped.returncode == 0, stopped.stderr
    if TIMINGS:
        print("\nSLURM timings:", TIMINGS, file=sys.stderr)


@pytest.fixture
def cluster(slurm_cluster: SlurmCluster) -> Iterator[SlurmCluster]:
    yield slurm_cluster
    slurm_cluster.cancel_leftovers()  # whatever a failing test left queued or running


# -- static and local checks (no cluster)


def test_endpoint_file_is_never_seen_half_written(tmp_path: Path) -> None:
    """A reader polling in a tight loop while the file is rewritten 100 times (20 kB each, many
    write() calls) sees either no file (only before the first write) or a whole, consistent one.
    The same reader against a plain `>` writer catches torn files: the check has teeth."""

    def hammer(atomic: bool) -> dict[str, int]:
        target = tmp_path / f"{'atomic' if atomic else 'plain'}" / "endpoint.env"
        target.parent.mkdir()
        writer = r"""
            source "$LIB"
            pad=$(printf 'x%.0s' $(seq 1 20000))
            for i in $(seq 1 100); do
                port=$((20000 + i))
                if [ "$ATOMIC" = 1 ]; then
                    write_kv_file "$F" "SERVER_JOB_ID=$i" "PADDING=$pad" "SERVER_PORT=$port" "VLLM_BASE_URL=http://h:$port/v1"
                else
                    { printf 'SERVER_JOB_ID=%s\nPADDING=%s\n' "$i" "$pad"; printf 'SERVER_PORT=%s\n' "$port"
                      printf 'VLLM_BASE_URL=http://h:%s/v1\nBFCL_EXT_ENDPOINT_COMPLETE=1\n' "$port"; } >"$F"
                fi
            done
        """
        counts = {"whole": 0, "torn": 0, "absent_after_first": 0, "versions": 0}
        seen: set[str] = set()
        stop = threading.Event()

        def reader() -> None:
            while not stop.is_set():
                try:
                    text = target.read_text()
                except FileNotFoundError:
                    if seen:
                        counts["absent_after_first"] += 1
                    continue
                facts = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and line[0] != "#")
                job = facts.get("SERVER_JOB_ID", "")
                whole = (facts.get("BFCL_EXT_ENDPOINT_COMPLETE") == "1" and job.isdigit()
                         and facts.get("SERVER_PORT") == str(20000 + int(job))
                         and facts.get("VLLM_BASE_URL") == f"http://h:{20000 + int(job)}/v1"
                         and len(facts.get("PADDING", "")) == 20000)
                counts["whole" if whole else "torn"] += 1
                seen.add(job)

        thread = threading.Thread(target=reader)
        thread.start()
        try:
            subprocess.run(["bash", "-c", writer], check=True, timeout=120,
                           env={**os.environ, "LIB": str(SLURM_DIR / "lib.sh"), "F": str(target),
                                "ATOMIC": "1" if atomic else "0"})
        finally:
            stop.set()
            thread.join()
        counts["versions"] = len(seen)
        if atomic:  # the JSON twin is whole too
            assert json.loads((target.parent / "endpoint.json").read_text())["SERVER_PORT"] == "20100"
            assert not [p for p in target.parent.iterdir() if p.name.startswith(".")], "temporary files left"
        return counts

    atomic = hammer(atomic=True)
    assert atomic["torn"] == 0 and atomic["absent_after_first"] == 0, atomic
    assert atomic["whole"] > 100 and atomic["versions"] > 10, atomic
    plain = hammer(atomic=False)
    assert plain["torn"] > 0, f"the reader never caught a plain writer mid-write: {plain}"


def test_submit_dry_run_shows_site_and_user_settings(tmp_path: Path) -> None:
    site = tmp_path / "site.env"
    site.write_text((SLURM_DIR / "site.env").read_text().replace("SITE_PARTITION=${SITE_PARTITION-}",
                                                                 "SITE_PARTITION=${SITE_PARTITION-gpu}"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BFCL_EXT_", "SITE_", "SERVE_", "VLLM_"))}
    args = [str(SLURM_DIR / "submit.sh"), "--site", str(site), "--model", "Qwen/Qwen3-8B", "--model-path",
            "/models/qwen3-8b", "--categories", "simple_python,multiple", "--account", "proj42", "--gpus", "2",
            "--time", "02:00:00", "--runner-partition", "cpu", "--output", str(tmp_path / "out"), "--dry-run"]
    done = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    sbatch_lines = [line for line in done.stderr.splitlines() if "would run: sbatch" in line]
    server, runner = sbatch_lines
    assert "--partition=gpu" in server and "--gres=gpu:2" in server and "--account=proj42" in server
    assert "--time=02:00:00" in server and server.endswith("slurm/server.sbatch ")
    assert "--partition=cpu" in runner and "gres" not in runner and "--dependency=after:" in runner
    assert "--signal=B:TERM@120" in runner and "CANCEL_SERVER=1" in runner
    assert f"results:        {tmp_path / 'out'}" in done.stdout
    assert not (tmp_path / "out").exists()  # a dry run writes nothing

    het = subprocess.run([*args, "--mode", "hetjob"], capture_output=True, text=True, env=env, check=False)
    (line,) = [x for x in het.stderr.splitlines() if "would run" in x]
    component0, component1 = line.split(" : ")
    assert "--gres=gpu:2" in component0 and "--signal=B:TERM@120" in component0
    assert "gres" not in component1 and component1.endswith("slurm/hetjob.sbatch ")

    bad = subprocess.run([*args[:-1], "--mode", "both"], capture_output=True, text=True, env=env, check=False)
    assert bad.returncode == 2 and "--mode must be" in bad.stderr


# -- flows on the cluster


def _check_complete(output: Path, total: int = 400) -> None:
    facts = summary(output)
    assert facts["status"] == "complete", job_logs(output)
    assert facts["categories"]["simple_python"]["accuracy"] == 1.0
    assert facts["entries"]["answered"] == total


def test_two_job_flow(cluster: SlurmCluster, tmp_path: Path) -> None:
    output = tmp_path / "out"
    with FirstRequestWatch(output) as watch:
        ids = cluster.submit("--model", "m", "--categories", "simple_python", "--output", str(output))
        runner = cluster.wait(ids["runner"])
        ended = time.monotonic() - watch.started
    TIMINGS["two_job"] = {**watch.timings(), "submit_to_runner_end_s": round(ended, 2)}
    assert runner.exit_code == 0, job_logs(output)
    assert cluster.wait(ids["server"]).state == "CANCELLED"  # by the runner: CANCEL_SERVER=1
    _check_complete(output)
    assert_server_gone(output)
    logs = job_logs(output)
    assert f"cancelling the server job {ids['server']}" in logs
    assert (output / "slurm" / f"server-{ids['server']}.log").exists()


def test_two_job_flow_without_dependency(cluster: SlurmCluster, tmp_path: Path) -> None:
    """Also: the server started by the vLLM image's entrypoint, whose facts reach the runner's manifest,
    and both image files hashed by the job scripts (on the host, where their paths are valid)."""
    output = tmp_path / "out"
    image, runner_image = tmp_path / "vllm.sif", tmp_path / "runner.sif"
    image.write_bytes(b"stands for a server image")
    runner_image.write_bytes(b"stands for the runner image")
    env = cluster.job_env({
        "BFCL_EXT_SERVER_COMMAND": f"bash {REPO_ROOT / 'docker' / 'vllm' / 'entrypoint.sh'}",
        "SERVE_COMMAND": f"{BFCL_EXT_BIN} standin", "SERVE_TOOL_CALL_PARSER": "qwen3_xml", "SERVE_IMAGE": str(image),
        "BFCL_EXT_RUNNER_IMAGE": str(runner_image),
    })
    ids = cluster.submit("--model", "m", "--categories", "simple_python", "--output", str(output), "--limit", "50",
                         "--no-dependency", env=env)
    assert cluster.wait(ids["runner"]).exit_code == 0, job_logs(output)
    cluster.wait(ids["server"])
    _check_complete(output, total=50)
    assert_server_gone(output)
    server = json.loads((output / "manifest.json").read_text())["server"]
    assert server["mode"] == "skip"
    assert server["tool_call_parser"] == "qwen3_xml"
    assert server["facts"]["path"] == str(output / "slurm" / f"server-{ids['server']}.json")
    assert server["launched_with"][-2:] == ["--generation-config", "vllm"]
    images = json.loads((output / "manifest.json").read_text())["images"]
    for role, path in (("server", image), ("runner", runner_image)):
        digest = "sha256:" + sha256_file(path)
        assert images[role] == {"reference": f"{path}@{digest}", "digest": digest}, role
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("bfcl-image-digest.*")), "hash files left behind"


def test_an_image_path_the_endpoint_file_cannot_hold_is_left_out(cluster: SlurmCluster, tmp_path: Path) -> None:
    output = tmp_path / "out"
    image = tmp_path / "my images" / "vllm.sif"
    image.parent.mkdir()
    image.write_bytes(b"image")
    ids = cluster.submit("--model", "m", "--categories", "simple_python", "--output", str(output), "--limit", "5",
                         env=cluster.job_env({"SERVE_IMAGE": str(image)}))
    assert cluster.wait(ids["runner"]).exit_code == 0, job_logs(output)
    _check_complete(output, total=5)
    assert "has characters the endpoint file cannot hold: the image is not recorded" in job_logs(output)
    assert json.loads((output / "manifest.json").read_text())["images"]["server"] is None


def test_hetjob_flow(cluster: SlurmCluster, tmp_path: Path) -> None:
    output = tmp_path / "out"
    with FirstRequestWatch(output) as watch:
        ids = cluster.submit("--mode", "hetjob", "--model", "m", "--categories", "simple_python", "--output",
                             str(output))
        job = cluster.wait(ids["het"])
    TIMINGS["hetjob"] = watch.timings()
    assert job.exit_code == 0, job_logs(output)
    _check_complete(output)
    assert_server_gone(output)
    logs = job_logs(output)
    assert "server in component 0 (n" in logs  # the server ran as a step of component 0
    assert re.search(rf"bfcl-server: job {ids['het']} \(step {ids['het']}\.\d\)", logs), logs


@pytest.mark.parametrize("mode", ["pair", "managed"])
def test_single_job_flow(cluster: SlurmCluster, tmp_path: Path, mode: str) -> None:
    output = tmp_path / "out"
    with FirstRequestWatch(output) as watch:
        ids = cluster.submit("--mode", "single", "--single-mode", mode, "--model", "m", "--categories",
                             "simple_python", "--output", str(output))
        job = cluster.wait(ids["single"])
    assert job.exit_code == 0, job_logs(output)
    _check_complete(output)
    if mode == "pair":
        TIMINGS["single_pair"] = watch.timings()
        assert_server_gone(output)
    else:  # bfcl-ext started and stopped the server itself
        assert summary(output)["mode"] == "managed"
        assert (output / "logs" / "vllm-server.log").exists()
        assert not (output / "slurm" / "endpoint.env").exists()
        assert not [p for p in Path("/proc").glob("[0-9]*") if _cmdline_has(p, "vllm-shim.py")]


# -- the docs' submit command, as written (issue 13 §1)

EXAMPLE_MODEL = "Qwen/Qwen3-8B"  # the docs' --model: a BFCL registry name (QwenHandler, prompt mode)
EXAMPLE_MODEL_PATH = Path("/models/Qwen3-8B")  # the docs' --model-path
TINY_MARK = ".bfcl-ext-tiny-model"  # in EXAMPLE_MODEL_PATH: which tiny model it holds
CPU_SERVE_ARGS = "--dtype float32 --enforce-eager --kv-cache-memory-bytes 134217728"  # as the vLLM image tests


def _tiny_model_at(target: Path, tiny: Path) -> Path:
    """The tiny model (weights and tokenizer) at ``target``, where the jobs load it. Idempotent and
    safe for two test runs at once: copied beside it, then renamed into place; a copy of this tiny
    model already there is kept, one of an older recipe replaced; anything else there (a real model)
    is never touched: the test fails saying so."""
    mark = target / TINY_MARK
    if mark.is_file() and mark.read_text() == tiny.name:
        return target
    assert not target.exists() or mark.is_file(), f"{target} exists and is not the tests' tiny model: not touched"
    target.parent.mkdir(parents=True, exist_ok=True)
    fresh = target.with_name(f".{target.name}.{os.getpid()}.{time.monotonic_ns()}")
    shutil.copytree(tiny, fresh)
    (fresh / TINY_MARK).write_text(tiny.name)
    fresh.chmod(0o755)
    old = None
    if target.exists():  # an older tiny model: set aside, then removed
        old = target.with_name(fresh.name + ".old")
        target.rename(old)
    try:
        fresh.rename(target)
    except OSError:  # another run put it there first
        shutil.rmtree(fresh)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    assert (target / TINY_MARK).read_text() == tiny.name, f"{target} holds another tiny model"
    return target


@pytest.mark.parametrize(("doc", "block_id"), [("README.md", "slurm-quickstart"), ("slurm/README.md", "submit")])
def test_the_docs_submit_command_runs_as_written(cluster: SlurmCluster, tiny_model_dir: Path, tmp_path: Path,
                                                  doc: str, block_id: str) -> None:
    """README.md's SLURM quickstart and slurm/README.md's submit block, run as written from a
    checkout's root: two jobs, --gpus 1 and --time 04:00:00 as given. Swapped, outside the text:
    the site.env edit is the test cluster's own (BFCL_EXT_SITE_ENV); the GPU is a fake one of the
    test cluster (gres); Qwen3-8B's weights are the tiny random model at /models/Qwen3-8B, with its
    tokenizer; the GPU vLLM is the CPU build, started by the vLLM image's entrypoint as the SIF
    would; and the tiny model on two CPUs answers 3 entries of each category, 16 tokens each."""
    block = {("README.md", "slurm-quickstart"): doc_block("README.md", "slurm-quickstart"),
             ("slurm/README.md", "submit"): doc_block("slurm/README.md", "submit")}[(doc, block_id)]
    assert "--model Qwen/Qwen3-8B --model-path /models/Qwen3-8B" in block and "--gpus 1 --time 04:00:00" in block
    _tiny_model_at(EXAMPLE_MODEL_PATH, tiny_model_dir)
    home = tmp_path / "bfcl_ext"  # a checkout: slurm/ at its root, results under it (./bfcl-results)
    shutil.copytree(SLURM_DIR, home / "slurm")
    cpu = {k: v for k, v in vllm_env().items() if k.startswith(("HF_", "TRANSFORMERS_", "VLLM_", "DO_NOT"))}
    env = cluster.job_env({
        **cpu,
        "HF_HOME": str(tmp_path / "empty-hf-home"),  # no hub cache: the tokenizer must come from the model folder
        "BFCL_EXT_SERVER_COMMAND": f"bash {REPO_ROOT / 'docker' / 'vllm' / 'entrypoint.sh'}",
        "SERVE_COMMAND": f"{vllm_python()} -m vllm.entrypoints.openai.api_server",
        "SERVE_MAX_MODEL_LEN": "2048", "SERVE_EXTRA_ARGS": CPU_SERVE_ARGS,
        "BFCL_EXT_LIMIT": "3", "BFCL_EXT_MAX_TOKENS": "16",
    })  # fmt: skip
    for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
        env.pop(name, None)

    done = subprocess.run(["bash", "-e", "-c", block], cwd=home, env=env, capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    ids = dict(re.findall(r"^(server|runner) job:\s+(\d+)", done.stdout, re.MULTILINE))
    assert set(ids) == {"server", "runner"}, done.stdout  # the default mode: two jobs
    cluster.submitted.extend(ids.values())
    output = home / "bfcl-results" / "Qwen_Qwen3-8B"
    assert f"results:        {output} " in done.stdout
    for role in ("server", "runner"):  # as written: --time 04:00:00 for both, --gpus 1 for the server
        record = cluster.job(ids[role]).raw
        assert "TimeLimit=04:00:00" in record, record
        assert ("TresPerNode=gres:gpu:1" in record) == (role == "server"), record

    runner = cluster.wait(ids["runner"], timeout=400)
    assert runner.exit_code == 0 and runner.state == "COMPLETED", job_logs(output)
    server = cluster.wait(ids["server"], timeout=60)
    assert server.state == "CANCELLED", server.raw  # by the runner (CANCEL_SERVER)
    logs = job_logs(output)
    assert f"cancelling the server job {ids['server']}" in logs
    assert_server_gone(output)

    gpu = json.loads((output / "slurm" / f"server-{ids['server']}.json").read_text())["cuda_visible_devices"]
    assert gpu == "0", "the server job did not get the GPU it asked for"  # SLURM's, from --gres=gpu:1

    facts = summary(output)
    assert facts["status"] == "complete", facts
    assert facts["model"] == EXAMPLE_MODEL, facts
    assert {name: score["total"] for name, score in facts["categories"].items()} == {"simple_python": 3,
                                                                                 "multiple": 3}, facts
    assert facts["entries"]["answered"] == 6 and facts["entries"]["failed"] == 0, facts["entries"]
    answers = [json.loads(line) for path in (output / "result").rglob("*_result.json")
               for line in path.read_text().splitlines()]  # fmt: skip
    assert len(answers) == 6 and all(0 < a["output_token_count"] <= 16 for a in answers), answers  # vLLM's
    assert facts["handler"].startswith("prompt: /v1/completions, prompts formatted by BFCL's QwenHandler"), facts
    assert f"bfcl-ext: the tokenizer comes from {EXAMPLE_MODEL_PATH}" in logs.splitlines(), logs
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["model"]["root"] == str(EXAMPLE_MODEL_PATH), manifest["model"]
    assert "vllm.entrypoints.openai.api_server" in " ".join(manifest["server"]["launched_with"]), manifest["server"]


def _cmdline_has(proc: Path, word: str) -> bool:
    try:
        return word in (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def _wait_answers(output: Path, at_least: int, timeout: float = 90) -> int:
    def answers() -> int:
        files = list((output / "result").rglob("*simple_python*.json")) if (output / "result").exists() else []
        count = sum(len(f.read_text().splitlines()) for f in files)
        return count if count >= at_least else 0

    return wait_until(answers, within=timeout, what=f"{at_least} answers", explain=lambda: job_logs(output))


def _submit_and_wait_for_a_first_answer(cluster: SlurmCluster, output: Path, limit: int) -> dict[str, str]:
    """A two-job evaluation slow enough (0.2 s per answer, one thread) to look at while it runs."""
    slow = cluster.job_env({"BFCL_EXT_SERVER_COMMAND": standin_command("--latency", "0.2"),
                            "BFCL_EXT_NUM_THREADS": "1"})
    assert "VLLM_API_KEY" not in slow  # the server makes its own one-time key
    ids = cluster.submit("--model", "m", "--categories", "simple_python", "--output", str(output), "--limit",
                         str(limit), env=slow)
    _wait_answers(output, 1)
    return ids


def test_server_cancelled_mid_run_then_resubmitted(cluster: SlurmCluster, tmp_path: Path) -> None:
    output = tmp_path / "out"
    slow = cluster.job_env({"BFCL_EXT_SERVER_COMMAND": standin_command("--latency", "0.5"),
                            "BFCL_EXT_NUM_THREADS": "4", "BFCL_EXT_RECOVERY_TIMEOUT": "5"})
    ids = cluster.submit("--model", "m", "--categories", "simple_python", "--output", str(output), "--limit", "100",
                         env=slow)
    _wait_answers(output, 20)
    cluster.run(["scancel", ids["server"]])
    runner = cluster.wait(ids["runner"])
    assert runner.exit_code in (3, 4), job_logs(output)  # documented: entries left, or server not ready
    facts = summary(output)
    kept = facts["entries"]["answered"]
    assert facts["status"] != "complete" and 20 <= kept < 100, facts
    assert "results so far are kept" in job_logs(output)
    cluster.wait(ids["server"])
    assert_server_gone(output)

    ids = cluster.submit("--model", "m", "--categories", "simple_python", "--output", str(output), "--limit", "100")
    assert cluster.wait(ids["runner"]).exit_code == 0, job_logs(output)
    _check_complete(output, total=100)
    assert summary(output)["entries"]["answered_this_run"] == 100 - kept  # resumed, nothing asked twice
    cluster.wait(ids["server"])
    assert_server_gone(output)


def test_time_limit_signal_stops_runner_cleanly(cluster: SlurmCluster, tmp_path: Path) -> None:
    """`scancel --batch --signal=TERM` is what `--signal=B:TERM@lead` does before the time limit:
    SIGTERM to the batch shell only. The runner passes it to bfcl-ext, which keeps its results."""
    output = tmp_path / "out"
    slow = cluster.job_env({"BFCL_EXT_SERVER_COMMAND": standin_command("--latency", "0.5"),
                            "BFCL_EXT_NUM_THREADS": "4"})
    ids = cluster.submit("--model", "m", "--categories", "simple_python", "--output", str(output), "--limit", "100",
                         env=slow)
    _wait_answers(output, 20)
    cluster.run(["scancel", "--batch", "--signal=TERM", ids["runner"]])
    runner = cluster.wait(ids["runner"])
    assert runner.exit_code == 143, job_logs(output)
    facts = summary(output)
    assert facts["status"] == "interrupted", facts
    assert "passing it to bfcl-ext" in job_logs(output)
    cluster.wait(ids["server"])
    assert_server_gone(output)
    kept = facts["entries"]["answered"]

    ids = cluster.submit("--model", "m", "--categories", "simple_python", "--output", str(output), "--limit", "100")
    assert cluster.wait(ids["runner"]).exit_code == 0, job_logs(output)
    _check_complete(output, total=100)
    assert summary(output)["entries"]["answered_this_run"] == 100 - kept
    cluster.wait(ids["server"])
    assert_server_gone(output)


@pytest.mark.parametrize("mode", ["hetjob", "single"])
def test_time_limit_signal_stops_one_job_shapes_cleanly(cluster: SlurmCluster, tmp_path: Path, mode: str) -> None:
    """The same SIGTERM to the batch shell of a het job (it signals the runner step) and of a single
    job (it passes the signal to the runner): bfcl-ext stops once, cleanly, and the server stops."""
    output = tmp_path / "out"
    slow = cluster.job_env({"BFCL_EXT_SERVER_COMMAND": standin_command("--latency", "0.5"),
                            "BFCL_EXT_NUM_THREADS": "4"})
    ids = cluster.submit("--mode", mode, "--model", "m", "--categories", "simple_python", "--output", str(output),
                         "--limit", "100", env=slow)
    (job_id,) = ids.values()
    _wait_answers(output, 20)
    cluster.run(["scancel", "--batch", "--signal=TERM", job_id])
    job = cluster.wait(job_id)
    assert job.exit_code == 143, job_logs(output)
    assert summary(output)["status"] == "interrupted"
    assert job_logs(output).count("bfcl-ext: error: stopped by SIGTERM") == 1
    assert_server_gone(output)


def test_real_time_limit(cluster: SlurmCluster, tmp_path: Path) -> None:
    """A two-minute runner with --signal=B:TERM@100 gets SIGTERM before its limit and stops cleanly
    (exit 143, not TIMEOUT), results kept. The 100 s lead leaves the clean-up time on a loaded
    machine: with one minute and 50 s, it once hit the limit (TIMEOUT)."""
    output = tmp_path / "out"
    slow = cluster.job_env({"BFCL_EXT_SERVER_COMMAND": standin_command("--latency", "1"),
                            "BFCL_EXT_NUM_THREADS": "2"})
    ids = cluster.submit("--model", "m", "--categories", "simple_python", "--output", str(output),
                         "--runner-time", "2", "--signal-lead", "100", env=slow)
    runner = cluster.wait(ids["runner"], timeout=210)
    assert runner.state != "TIMEOUT" and runner.exit_code == 143, job_logs(output)
    assert "received SIGTERM" in job_logs(output)
    if (output / "summary.json").exists():  # the signal may come before the first request (up to 60 s early)
        assert summary(output)["status"] == "interrupted"
    cluster.wait(ids["server"])
    assert_server_gone(output)


def test_runner_reports_missing_endpoint(cluster: SlurmCluster, tmp_path: Path) -> None:
    output = tmp_path / "out"
    env = cluster.job_env({"BFCL_EXT_OUTPUT_DIR": str(output), "BFCL_EXT_MODEL": "m",
                           "BFCL_EXT_TEST_CATEGORY": "simple_python", "BFCL_EXT_ENDPOINT_TIMEOUT": "2",
                           "BFCL_EXT_SLURM_DIR": str(SLURM_DIR)})
    output.mkdir()
    job = cluster.sbatch(f"--output={output}/runner-%j.out", str(SLURM_DIR / "runner.sbatch"), env=env)
    assert cluster.wait(job).exit_code == 3
    log = (output / f"runner-{job}.out").read_text()
    assert f"no endpoint file appeared at {output}/slurm/endpoint.env within 2s" in log


def test_runner_reports_failed_server_job_with_log_tail(cluster: SlurmCluster, tmp_path: Path) -> None:
    output = tmp_path / "out"
    env = cluster.job_env({"BFCL_EXT_SERVER_COMMAND": "/bin/sh -c 'echo CUDA out of memory >&2; exit 7'"})
    ids = cluster.submit("--model", "m", "--categories", "simple_python", "--output", str(output), env=env)
    runner = cluster.wait(ids["runner"])
    assert runner.exit_code == 3
    assert cluster.wait(ids["server"]).exit_code == 3
    log = (output / "slurm" / f"bfcl-runner-{ids['runner']}.out").read_text()
    assert f"the server job {ids['server']} ended" in log and "without publishing an endpoint" in log
    assert "| CUDA out of memory" in log  # the server's log tail
    assert not (output / "slurm" / "endpoint.env").exists()


def test_runner_reports_model_not_listed(cluster: SlurmCluster, tmp_path: Path) -> None:
    output = tmp_path / "out"
    env = cluster.job_env({"SERVE_SERVED_MODEL_NAME": "other-model"})
    ids = cluster.submit("--model", "m", "--categories", "simple_python", "--output", str(output), env=env)
    assert cluster.wait(ids["runner"]).exit_code == 3
    log = (output / "slurm" / f"bfcl-runner-{ids['runner']}.out").read_text()
    assert "model 'm' is not listed by the server" in log and "the server lists other-model" in log
    assert "| standin: serving other-model" in log
    assert cluster.wait(ids["server"]).state == "CANCELLED"  # CANCEL_SERVER: whatever the outcome
    assert_server_gone(output)


def test_runner_ignores_endpoint_of_another_server_job(cluster: SlurmCluster, tmp_path: Path) -> None:
    """Pairing: an endpoint file naming another job (a stale one, or a second server on the same
    folder) is not used, and CANCEL_SERVER cancels only the paired job."""
    output = tmp_path / "out"
    (output / "slurm").mkdir(parents=True)
    bystander = cluster.sbatch("--wrap", "sleep 120", f"--output={output}/bystander-%j.out",
                               env=cluster.job_env())
    (output / "slurm" / "endpoint.env").write_text(
        f"SERVER_JOB_ID={bystander}\nSERVER_HOST=127.0.0.1\nSERVER_PORT=9\nVLLM_BASE_URL=http://127.0.0.1:9/v1\n"
        "BFCL_EXT_ENDPOINT_COMPLETE=1\n"
    )
    env = cluster.job_env({"BFCL_EXT_OUTPUT_DIR": str(output), "BFCL_EXT_MODEL": "m",
                           "BFCL_EXT_TEST_CATEGORY": "simple_python", "BFCL_EXT_ENDPOINT_TIMEOUT": "2",
                           "BFCL_EXT_SLURM_DIR": str(SLURM_DIR), "BFCL_EXT_SERVER_JOB_ID": "999999",
                           "CANCEL_SERVER": "1"})
    job = cluster.sbatch(f"--output={output}/runner-%j.out", str(SLURM_DIR / "runner.sbatch"), env=env)
    assert cluster.wait(job).exit_code == 3
    log = (output / f"runner-{job}.out").read_text()
    assert f"names server job {bystander}, not 999999: ignored" in log
    assert cluster.state(bystander) == "RUNNING"  # never cancelled: not the paired job
    cluster.run(["scancel", bystander])


def test_setup_script_is_idempotent_and_stops_by_pid(slurm_cluster: SlurmCluster) -> None:
    env = {**os.environ, "BFCL_EXT_SLURM_STATE": str(slurm_cluster.state_dir)}
    pids_before = {p.name: p.read_text() for p in (slurm_cluster.state_dir / "run").glob("*.started")}
    again = subprocess.run(["bash", str(SETUP_SCRIPT)], env={**env, **_ports(slurm_cluster)}, capture_output=True,
                           text=True, check=False, timeout=120)
    assert again.returncode == 0, again.stderr
    assert f"export SLURM_CONF={slurm_cluster.conf}" in again.stdout
    assert "already running" in again.stderr
    assert {p.name: p.read_text() for p in (slurm_cluster.state_dir / "run").glob("*.started")} == pids_before


def _ports(cluster: SlurmCluster) -> dict[str, str]:
    conf = cluster.conf.read_text()
    ctld = conf.split("SlurmctldPort=")[1].split()[0]
    node = conf.split(" Port=")[1].split()[0]
    return {"BFCL_EXT_SLURM_CTLD_PORT": ctld, "BFCL_EXT_SLURM_NODE_PORT": node}


def test_endpoint_and_status_files_are_sourceable(cluster: SlurmCluster, tmp_path: Path) -> None:
    output = tmp_path / "out"
    ids = _submit_and_wait_for_a_first_answer(cluster, output, limit=20)
    endpoint = output / "slurm" / "endpoint.env"
    shown = subprocess.run(["sh", "-c", f'. "{endpoint}"; echo "$SERVER_JOB_ID $VLLM_BASE_URL"'],
                           capture_output=True, text=True, check=True).stdout.split()
    facts = read_kv(endpoint)
    assert shown == [ids["server"], facts["VLLM_BASE_URL"]]
    assert facts["VLLM_BASE_URL"] == f"http://{facts['SERVER_HOST']}:{facts['SERVER_PORT']}/v1"
    assert 20000 <= int(facts["SERVER_PORT"]) < 40000  # derived from the job id
    assert json.loads((output / "slurm" / "endpoint.json").read_text())["SERVER_PORT"] == facts["SERVER_PORT"]
    assert read_kv(output / "slurm" / "server-status.env")["SERVER_STATE"] == "ready"
    assert cluster.wait(ids["runner"]).exit_code == 0, job_logs(output)
    cluster.wait(ids["server"])
    assert_server_gone(output)


# -- a shared cluster is hostile (issue 12): another user, another job, a controller that does not answer

ATTACKER = "bfcl-mallory"  # a second uid, made by the test (no real account: no home, no shell)


def _attacker() -> tuple[int, int]:
    """The uid and gid of a second user on this machine, created once with useradd."""
    if subprocess.run(["id", "-u", ATTACKER], capture_output=True, check=False).returncode != 0:
        made = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", ATTACKER],
                              capture_output=True, text=True, check=False)
        assert made.returncode == 0, f"useradd {ATTACKER} failed (the tests run as root): {made.stderr}"
    ids = subprocess.run(["id", "-u", ATTACKER], capture_output=True, text=True, check=True).stdout.strip(), \
        subprocess.run(["id", "-g", ATTACKER], capture_output=True, text=True, check=True).stdout.strip()
    return int(ids[0]), int(ids[1])


class Listener:
    """The attacker's server: a socket that records every connection (and what was sent first)."""

    def __init__(self) -> None:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    self.received.append(conn.recv(65536))
                except OSError:
                    self.received.append(b"")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def _plant_endpoint(folder: Path, job: str, port: int, owner: tuple[int, int] | None = None) -> Path:
    endpoint = folder / "endpoint.env"
    endpoint.write_text(f"SERVER_JOB_ID={job}\nSERVER_HOST=127.0.0.1\nSERVER_PORT={port}\n"
                        f"VLLM_BASE_URL=http://127.0.0.1:{port}/v1\nBFCL_EXT_ENDPOINT_COMPLETE=1\n")
    if owner:
        os.chown(endpoint, *owner)
    return endpoint


def _runner_env(cluster: SlurmCluster, output: Path, **extra: str) -> dict[str, str]:
    return cluster.job_env({"BFCL_EXT_OUTPUT_DIR": str(output), "BFCL_EXT_MODEL": "m",
                            "BFCL_EXT_TEST_CATEGORY": "simple_python", "BFCL_EXT_SLURM_DIR": str(SLURM_DIR), **extra})


def _queued(cluster: SlurmCluster) -> set[str]:
    return set(cluster.run(["squeue", "-h", "-o", "%i"]).stdout.split())


def test_server_is_closed_by_default_and_the_key_stays_secret(cluster: SlurmCluster, tmp_path: Path) -> None:
    """No VLLM_API_KEY given: the server job makes a one-time key (a 0600 file, never in the endpoint
    file, argv, a log or the manifest); a request without it gets 401; the runner uses it."""
    output = tmp_path / "out"
    ids = _submit_and_wait_for_a_first_answer(cluster, output, limit=20)
    key_file = output / "slurm" / f"server-{ids['server']}.key"
    assert key_file.stat().st_mode & 0o777 == 0o600 and key_file.stat().st_uid == os.getuid()
    key = key_file.read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    facts = read_kv(output / "slurm" / "endpoint.env")
    models = f"{facts['VLLM_BASE_URL']}/models"
    without = subprocess.run(["curl", "-s", "--noproxy", "*", "-o", "/dev/null", "-w", "%{http_code}", models],
                             capture_output=True, text=True, check=False)
    assert without.stdout == "401"
    with_key = subprocess.run(["curl", "-s", "--noproxy", "*", "-o", "/dev/null", "-w", "%{http_code}", "-H",
                               f"Authorization: Bearer {key}", models], capture_output=True, text=True, check=False)
    assert with_key.stdout == "200"
    listing = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert key not in listing, "the key is visible in the process list"
    assert cluster.wait(ids["runner"]).exit_code == 0, job_logs(output)
    cluster.wait(ids["server"])
    _check_complete(output, total=20)
    assert_server_gone(output)
    assert not key_file.exists(), "the one-time key outlived its server"
    leaked = [str(p) for p in output.rglob("*") if p.is_file() and key in p.read_text(errors="replace")]
    assert not leaked, f"the key was written to {leaked}"
    assert "using the server's one-time key" in job_logs(output)


def test_a_folder_another_user_prepared_is_refused(cluster: SlurmCluster, tmp_path: Path) -> None:
    """The attack: a second user pre-creates the victim's output folder (mode 777), plants an endpoint
    file naming the victim's running server job and points the log names at the victim's files.
    submit.sh refuses before anything is submitted; a runner submitted by hand refuses too, and
    the attacker's server never sees a connection."""
    uid, gid = _attacker()
    victim_server = cluster.sbatch("--wrap", "sleep 120", f"--output={tmp_path}/victim-%j.out")
    output = tmp_path / "shared" / "out"
    (output / "slurm").mkdir(parents=True)
    for folder in (output, output / "slurm"):
        folder.chmod(0o777)
        os.chown(folder, uid, gid)
    attacker = Listener()
    try:
        _plant_endpoint(output / "slurm", victim_server, attacker.port, owner=(uid, gid))
        precious = tmp_path / "precious.txt"
        precious.write_text("the victim's file\n")
        for name in (f"server-{victim_server}.log", f"bfcl-server-{victim_server}.out"):
            os.symlink(precious, output / "slurm" / name)
        before = _queued(cluster)
        done = cluster.run([str(SLURM_DIR / "submit.sh"), "--site", str(cluster.site_file), "--model", "m",
                            "--categories", "simple_python", "--output", str(output)])
        assert done.returncode == 2, done.stderr
        assert f"bfcl-submit: error: {output} belongs to {ATTACKER} (uid {uid}), not to you" in done.stderr
        assert _queued(cluster) == before, "submit.sh submitted a job into a folder it refused"
        assert not (output / "slurm" / "submissions.log").exists()

        job = cluster.sbatch(f"--output={tmp_path}/runner-%j.out", str(SLURM_DIR / "runner.sbatch"),
                             env=_runner_env(cluster, output, BFCL_EXT_ENDPOINT_TIMEOUT="5"))
        assert cluster.wait(job).exit_code == 2
        log = (tmp_path / f"runner-{job}.out").read_text()
        assert f"ERROR: {output} belongs to {ATTACKER}" in log
        assert attacker.received == [], "the runner connected to the attacker's server"
        assert precious.read_text() == "the victim's file\n"
    finally:
        attacker.close()
        cluster.run(["scancel", victim_server])

    own = tmp_path / "open"
    own.mkdir(mode=0o777)
    own.chmod(0o777)
    done = cluster.run([str(SLURM_DIR / "submit.sh"), "--site", str(cluster.site_file), "--model", "m",
                        "--categories", "simple_python", "--output", str(own)])
    assert done.returncode == 2
    assert f"{own} is writable by group or others (mode 777): run chmod go-w {own}" in done.stderr


def test_files_of_another_user_are_never_read(cluster: SlurmCluster, tmp_path: Path) -> None:
    """In the victim's own folder, an endpoint file that another uid owns is ignored (root could
    have chowned it there; on a real cluster it means the folder was not private once)."""
    uid, gid = _attacker()
    output = tmp_path / "out"
    (output / "slurm").mkdir(parents=True, mode=0o750)
    bystander = cluster.sbatch("--wrap", "sleep 120", f"--output={tmp_path}/bystander-%j.out")
    attacker = Listener()
    try:
        _plant_endpoint(output / "slurm", bystander, attacker.port, owner=(uid, gid))
        job = cluster.sbatch(f"--output={tmp_path}/runner-%j.out", str(SLURM_DIR / "runner.sbatch"),
                             env=_runner_env(cluster, output, BFCL_EXT_ENDPOINT_TIMEOUT="4"))
        assert cluster.wait(job).exit_code == 3
        assert "no endpoint file appeared" in (tmp_path / f"runner-{job}.out").read_text()
        assert attacker.received == []
    finally:
        attacker.close()
        cluster.run(["scancel", bystander])


def test_a_stale_endpoint_is_not_trusted_while_the_controller_cannot_answer(cluster: SlurmCluster,
                                                                           tmp_path: Path) -> None:
    """squeue fails (the controller is down): the endpoint file's job may have ended, so the runner
    keeps waiting instead of connecting; it gives up at its timeout, saying why."""
    output = tmp_path / "out"
    (output / "slurm").mkdir(parents=True)
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    squeue = fake_bin / "squeue"
    squeue.write_text("#!/bin/sh\necho 'squeue: error: slurm_load_jobs error: Unable to contact slurm controller' >&2\n"
                      "exit 1\n")
    squeue.chmod(0o755)
    ended = cluster.sbatch("--wrap", "true", f"--output={tmp_path}/ended-%j.out")
    cluster.wait(ended)
    attacker = Listener()
    try:
        _plant_endpoint(output / "slurm", ended, attacker.port)
        env = _runner_env(cluster, output, BFCL_EXT_ENDPOINT_TIMEOUT="20", BFCL_EXT_SQUEUE_INTERVAL="1")
        env["PATH"] = f"{fake_bin}:{env['PATH']}"
        job = cluster.sbatch(f"--output={tmp_path}/runner-%j.out", str(SLURM_DIR / "runner.sbatch"), env=env)
        assert cluster.wait(job, timeout=90).exit_code == 3
        log = (tmp_path / f"runner-{job}.out").read_text()
        assert f"names server job {ended}, and SLURM cannot say whether it runs: waiting" in log
        assert "within 20s" in log
        assert attacker.received == []
    finally:
        attacker.close()


def test_one_server_job_per_output_folder(cluster: SlurmCluster, tmp_path: Path) -> None:
    """A second submission to a folder in use is refused at submit; a second server job sent by
    hand exits 2 without touching the first one's endpoint or status; a lock left by an ended job
    (a server killed without clean-up) is taken over."""
    output = tmp_path / "out"
    ids = _submit_and_wait_for_a_first_answer(cluster, output, limit=30)
    lock = output / "slurm" / "server.lock"
    assert lock.read_text().strip() == ids["server"]
    endpoint_before = (output / "slurm" / "endpoint.env").read_text()

    before = _queued(cluster)
    again = cluster.run([str(SLURM_DIR / "submit.sh"), "--site", str(cluster.site_file), "--model", "m",
                         "--categories", "simple_python", "--output", str(output)])
    assert again.returncode == 2
    assert f"is in use by server job {ids['server']} (RUNNING)" in again.stderr
    assert _queued(cluster) == before

    env = cluster.job_env({"BFCL_EXT_OUTPUT_DIR": str(output), "BFCL_EXT_MODEL": "m",
                           "BFCL_EXT_SLURM_DIR": str(SLURM_DIR)})
    second = cluster.sbatch(f"--output={tmp_path}/second-%j.out", str(SLURM_DIR / "server.sbatch"), env=env)
    assert cluster.wait(second).exit_code == 2
    assert f"is in use by server job {ids['server']} (RUNNING)" in (tmp_path / f"second-{second}.out").read_text()
    assert (output / "slurm" / "endpoint.env").read_text() == endpoint_before
    assert read_kv(output / "slurm" / "server-status.env")["SERVER_JOB_ID"] == ids["server"]
    assert not (output / "slurm" / f"server-{second}.log").exists()

    assert cluster.wait(ids["runner"]).exit_code == 0, job_logs(output)
    cluster.wait(ids["server"])
    assert not lock.exists(), "the server job did not release its claim"

    ended = cluster.sbatch("--wrap", "true", f"--output={tmp_path}/ended-%j.out")
    cluster.wait(ended)
    lock.write_text(f"{ended}\n")  # as a SIGKILLed server job leaves it
    ids = cluster.submit("--model", "m", "--categories", "simple_python", "--output", str(output), "--limit", "30")
    assert cluster.wait(ids["runner"]).exit_code == 0, job_logs(output)
    assert f"taking over the claim on {output}/slurm of server job {ended}" in job_logs(output)
    cluster.wait(ids["server"])


def test_a_failed_runner_submission_cancels_the_server_job(cluster: SlurmCluster, tmp_path: Path) -> None:
    output = tmp_path / "out"
    done = cluster.run([str(SLURM_DIR / "submit.sh"), "--site", str(cluster.site_file), "--model", "m",
                        "--categories", "simple_python", "--output", str(output), "--runner-partition", "nosuch"])
    assert done.returncode == 1, done.stderr
    match = re.search(r"the runner could not be submitted: cancelling the server job (\d+)", done.stderr)
    assert match, done.stderr
    server = match.group(1)
    cluster.submitted.append(server)
    job = cluster.wait(server, timeout=60)
    assert job.state == "CANCELLED", job.raw
    assert not (output / "slurm" / "endpoint.env").exists()


def test_the_runner_stops_at_once_when_its_server_job_ends(cluster: SlurmCluster, tmp_path: Path) -> None:
    """The server job is cancelled mid-run while bfcl-ext would ride out a ten-minute recovery
    timeout: the runner notices the job has ended and stops within seconds, results kept (exit 3)."""
    output = tmp_path / "out"
    slow = cluster.job_env({"BFCL_EXT_SERVER_COMMAND": standin_command("--latency", "0.5"),
                            "BFCL_EXT_NUM_THREADS": "2", "BFCL_EXT_RECOVERY_TIMEOUT": "600",
                            "BFCL_EXT_SQUEUE_INTERVAL": "2"})
    ids = cluster.submit("--model", "m", "--categories", "simple_python", "--output", str(output), "--limit", "200",
                         env=slow)
    _wait_answers(output, 5)
    cancelled = time.monotonic()
    cluster.run(["scancel", ids["server"]])
    runner = cluster.wait(ids["runner"], timeout=120)
    took = time.monotonic() - cancelled
    assert runner.exit_code == 3, job_logs(output)
    assert took < 60, f"the runner took {took:.0f} s to notice"
    logs = job_logs(output)
    assert f"the server job {ids['server']} has ended" in logs and "results so far are kept" in logs
    assert 5 <= summary(output)["entries"]["answered"] < 200


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--model", "my model"], {}, "the served model name 'my model' has characters"),
    (["--model", "m$(touch {marker})"], {}, "has characters the job scripts cannot publish"),
    (["--output", "{tmp}/run-%j"], {}, "holds a %, which SLURM would expand"),
    (["--output", "{tmp}/my results"], {}, "has characters the job scripts cannot publish"),
    (["--time", "1:2:3:4"], {}, "--time must be a SLURM time limit"),
    (["--runner-time", "soon"], {}, "--runner-time must be a SLURM time limit"),
    (["--gpus", "99999999999999999999"], {}, "--gpus (SITE_GPUS) must be a whole number from 0 to 1024"),
    (["--gpus", "-1"], {}, "--gpus (SITE_GPUS) must be a whole number"),
    (["--signal-lead", "1e3"], {}, "--signal-lead (SITE_SIGNAL_LEAD) must be whole seconds"),
    (["--signal-lead", "08"], {}, "--signal-lead (SITE_SIGNAL_LEAD) must be whole seconds"),  # octal to bash
    (["--mode", "single"], {"SITE_SERVER_CPUS": "08"}, "SITE_SERVER_CPUS must be empty or a whole number of CPUs"),
    (["--mode", "single"], {"SITE_SERVER_CPUS": "BASH_VERSINFO[$(touch {marker})0]"},
     "SITE_SERVER_CPUS must be empty or a whole number of CPUs"),
    ([], {"SITE_RUNNER_MEM": "lots"}, "SITE_RUNNER_MEM must be empty or a sbatch --mem value"),
], ids=["model-space", "model-command", "output-percent", "output-space", "time", "runner-time", "gpus-huge",
        "gpus-negative", "signal-lead", "signal-lead-octal", "cpus-octal", "cpus-arithmetic", "memory"])
def test_submit_refuses_what_the_jobs_would_refuse(cluster: SlurmCluster, tmp_path: Path, args: list[str],
                                                   env: dict[str, str], message: str) -> None:
    marker = tmp_path / "marker"
    fill = {"marker": str(marker), "tmp": str(tmp_path)}
    site = tmp_path / "site.env"
    site.write_text((SLURM_DIR / "site.env").read_text())  # the shipped one: environment values win
    argv = ["--model", "m", "--categories", "simple_python", "--output", str(tmp_path / "out")]
    argv += [a.format(**fill) for a in args]
    before = _queued(cluster)
    done = cluster.run([str(SLURM_DIR / "submit.sh"), "--site", str(site), *argv],
                       env=cluster.job_env({k: v.format(**fill) for k, v in env.items()}))
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("bfcl-submit: error: ") and message in line, line
    assert _queued(cluster) == before, "something was submitted"
    assert not marker.exists(), "a setting was run as a command"
    assert not (tmp_path / "out").exists()


def test_an_empty_site_setting_in_the_environment_stays_empty(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BFCL_EXT_", "SITE_", "SERVE_", "VLLM_"))}
    env.update({"SITE_SERVER_MEM": "", "SITE_SERVER_CPUS": "", "SITE_TIME": ""})
    done = subprocess.run([str(SLURM_DIR / "submit.sh"), "--model", "m", "--categories", "simple_python", "--output",
                           str(tmp_path / "out"), "--dry-run"], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    server = next(line for line in done.stderr.splitlines() if "server.sbatch" in line)
    assert "--mem" not in server and "--cpus-per-task" not in server and "--time" not in server, server
    assert "--gres=gpu:1" in server  # unset settings keep their defaults


def test_quoting_and_commands_in_settings_run_nothing(cluster: SlurmCluster, tmp_path: Path) -> None:
    """$(...), backticks, ; and newlines in SERVE_* values and categories are data, never commands:
    the run goes on (or bfcl-ext refuses the category), and no marker file appears."""
    marker = tmp_path / "ran"
    payload = f"$(touch {marker}-dollar)`touch {marker}-tick`;touch {marker}-semi\ntouch {marker}-newline"
    output = tmp_path / "out"
    env = cluster.job_env({
        "BFCL_EXT_SERVER_COMMAND": f"bash {REPO_ROOT / 'docker' / 'vllm' / 'entrypoint.sh'}",
        "SERVE_COMMAND": f"{BFCL_EXT_BIN} standin", "SERVE_TOOL_CALL_PARSER": payload,
    })
    ids = cluster.submit("--model", "m", "--categories", "simple_python", "--output", str(output), "--limit", "5",
                         env=env)
    assert cluster.wait(ids["runner"]).exit_code == 0, job_logs(output)
    cluster.wait(ids["server"])
    assert json.loads((output / "manifest.json").read_text())["server"]["tool_call_parser"] == payload

    bad = tmp_path / "bad"
    ids = cluster.submit("--model", "m", "--categories", f"simple_python,{payload}", "--output", str(bad))
    assert cluster.wait(ids["runner"]).exit_code == 2, job_logs(bad)
    cluster.wait(ids["server"])
    assert "bfcl-ext: error:" in job_logs(bad)
    assert not list(tmp_path.glob("ran-*")), "a setting was run as a command"


def test_the_runner_stops_before_its_server_job_reaches_its_time_limit(cluster: SlurmCluster, tmp_path: Path) -> None:
    """Two-job mode: the server job starts first and would end first. The runner stops bfcl-ext
    lead seconds before the server job's end time, while the server still answers: exit 143,
    results kept, and the server job is cancelled by the runner, not ended by its time limit."""
    output = tmp_path / "out"
    slow = cluster.job_env({"BFCL_EXT_SERVER_COMMAND": standin_command("--latency", "1"),
                            "BFCL_EXT_NUM_THREADS": "2", "BFCL_EXT_SQUEUE_INTERVAL": "5"})
    ids = cluster.submit("--model", "m", "--categories", "simple_python", "--output", str(output),
                         "--time", "2", "--runner-time", "10", "--signal-lead", "60", env=slow)
    runner = cluster.wait(ids["runner"], timeout=180)
    assert runner.exit_code == 143, job_logs(output)
    server = cluster.wait(ids["server"])
    assert server.state == "CANCELLED", server.raw
    logs = job_logs(output)
    assert f"the server job {ids['server']} reaches its time limit in 60s: stopping bfcl-ext" in logs
    assert "results so far are kept" in logs
    facts = summary(output)
    assert facts["status"] == "interrupted" and 0 < facts["entries"]["answered"] < 400, facts


def test_a_path_another_user_can_redirect_is_refused(cluster: SlurmCluster, tmp_path: Path) -> None:
    """A symbolic link another user made, or a folder of theirs above the output folder: they could
    point it elsewhere, or swap it, mid-run. Refused (exit 2) before anything is submitted; a link
    of the user's own is followed once, and the jobs get the resolved path."""
    uid, gid = _attacker()
    shared, mine = tmp_path / "shared", tmp_path / "mine"
    shared.mkdir()
    mine.mkdir()
    os.chown(shared, uid, gid)
    link = tmp_path / "link"
    link.symlink_to(mine)
    os.chown(link, uid, gid, follow_symlinks=False)
    before = _queued(cluster)
    for output, message in ((shared / "out", f"{shared}, above {shared / 'out'}, belongs to {ATTACKER}"),
                            (link / "out", f"{link} is a symbolic link made by {ATTACKER} (uid {uid})")):
        done = cluster.run([str(SLURM_DIR / "submit.sh"), "--site", str(cluster.site_file), "--model", "m",
                            "--categories", "simple_python", "--output", str(output)])
        assert done.returncode == 2, done.stderr
        (line,) = done.stderr.splitlines()
        assert message in line, line
    assert _queued(cluster) == before
    assert not (mine / "out").exists()

    own = tmp_path / "own-link"
    own.symlink_to(mine)
    done = cluster.run([str(SLURM_DIR / "submit.sh"), "--site", str(cluster.site_file), "--model", "m",
                        "--categories", "simple_python", "--output", str(own / "out"), "--dry-run"])
    assert done.returncode == 0, done.stderr
    assert f"results:        {mine / 'out'} " in done.stdout


ATTACKER_SERVER = r"""
import http.server, json, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        print("GOT", self.path, self.headers.get("Authorization"), flush=True)
        body = json.dumps({"data": [{"id": "m"}]} if "models" in self.path else {}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("0.0.0.0", int(sys.argv[1])), Handler)
print("LISTENING", flush=True)
server.serve_forever()
"""


def test_another_user_who_takes_the_port_gets_neither_key_nor_endpoint(cluster: SlurmCluster,
                                                                     tmp_path: Path) -> None:
    """Between the port check and the server's bind (vLLM loads for minutes first), another user
    binds the port and answers like vLLM. The server job sees a listener of another uid: it sends
    no key there, publishes nothing and fails (exit 3)."""
    _attacker()
    port = free_port()
    output = tmp_path / "out"
    env = cluster.job_env({"SERVER_PORT": str(port),
                           "BFCL_EXT_SERVER_COMMAND": f"bash -c 'sleep 8; exec {standin_command()}'"})
    ids = cluster.submit("--model", "m", "--categories", "simple_python", "--output", str(output), env=env)
    server_out = output / "slurm" / f"bfcl-server-{ids['server']}.out"
    deadline = time.monotonic() + 60
    while f"on 0.0.0.0:{port}" not in (server_out.read_text() if server_out.exists() else ""):
        assert time.monotonic() < deadline, job_logs(output)
        time.sleep(0.2)
    as_attacker = ["runuser", "-u", ATTACKER, "--", "/usr/bin/python3"]  # /work is not theirs to read
    attacker = subprocess.Popen([*as_attacker, "-c", ATTACKER_SERVER, str(port)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert attacker.stdout is not None and "LISTENING" in attacker.stdout.readline()
        server = cluster.wait(ids["server"], timeout=60)
        assert server.exit_code == 3, job_logs(output)
        assert f"port {port} on" in job_logs(output) and "was taken by another user" in job_logs(output)
        assert cluster.wait(ids["runner"]).exit_code == 3
        assert not (output / "slurm" / "endpoint.env").exists()
    finally:
        attacker.terminate()
        seen = attacker.communicate(timeout=10)[0]
    assert "Bearer" not in seen, f"the key reached the other user's server: {seen}"


def test_a_server_outlives_no_killed_job_script(cluster: SlurmCluster, tmp_path: Path) -> None:
    """kill -9 of the server job's batch script (no clean-up runs): the server, in a session of its
    own, still gets SIGTERM (parent-death signal) instead of serving on with the key."""
    output = tmp_path / "out"
    ids = cluster.submit("--model", "m", "--categories", "simple_python", "--output", str(output), "--limit", "400",
                         env=cluster.job_env({"BFCL_EXT_SERVER_COMMAND": standin_command("--latency", "0.5")}))
    _wait_answers(output, 1)
    port = read_kv(output / "slurm" / "endpoint.env")["SERVER_PORT"]
    assert standin_pids(port)
    pids = cluster.run(["scontrol", "listpids", ids["server"]]).stdout.split()
    scripts = [int(pid) for pid in pids if pid.isdigit() and _cmdline_has(Path(f"/proc/{pid}"), "slurm_script")]
    assert scripts, pids
    for pid in scripts:
        os.kill(pid, 9)
    deadline = time.monotonic() + 20
    while standin_pids(port) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not standin_pids(port), "the server kept serving after its job script was killed"
    cluster.wait(ids["runner"], timeout=120)


def test_a_hand_run_server_id_is_trusted_only_for_a_live_server_script(tmp_path: Path) -> None:
    """An endpoint file naming local-PID (a server.sbatch started by hand) counts only while that PID
    is this user's server.sbatch: any other process with that PID does not make it live."""
    output = tmp_path / "out"
    (output / "slurm").mkdir(parents=True)
    other = subprocess.Popen(["sleep", "60"])
    attacker = Listener()
    try:
        _plant_endpoint(output / "slurm", f"local-{other.pid}", attacker.port)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("BFCL_EXT_", "SITE_", "SERVE_", "VLLM_", "SLURM_"))}
        env.update({"BFCL_EXT_OUTPUT_DIR": str(output), "BFCL_EXT_MODEL": "m", "BFCL_EXT_ENDPOINT_TIMEOUT": "3",
                    "BFCL_EXT_RUNNER_COMMAND": str(BFCL_EXT_BIN), "BFCL_EXT_SLURM_DIR": str(SLURM_DIR)})
        done = subprocess.run(["bash", str(SLURM_DIR / "runner.sbatch")], capture_output=True, text=True, env=env,
                              timeout=60, check=False)
        assert done.returncode == 3, done.stderr
        assert f"names server job local-{other.pid}, which is ENDED: ignored" in done.stderr
        assert attacker.received == []
    finally:
        other.kill()
        attacker.close()


def test_a_lock_that_names_no_job_is_taken_over_and_ports_are_checked(tmp_path: Path) -> None:
    slurm_out = tmp_path / "out" / "slurm"
    slurm_out.mkdir(parents=True)
    lock = slurm_out / "server.lock"
    lock.write_text(f"garbage$(touch {tmp_path}/ran)\n")
    claim = subprocess.run(["bash", "-c", f'source "{SLURM_DIR}/lib.sh"; claim_folder "{lock}" 4242'],
                           capture_output=True, text=True, check=False)
    assert claim.returncode == 0, claim.stderr
    assert lock.read_text() == "4242\n" and not (tmp_path / "ran").exists()

    env = {k: v for k, v in os.environ.items() if not k.startswith(("BFCL_EXT_", "SITE_", "SERVE_", "VLLM_", "SLURM_"))}
    env.update({"BFCL_EXT_OUTPUT_DIR": str(tmp_path / "port"), "BFCL_EXT_MODEL": "m",
                "BFCL_EXT_SLURM_DIR": str(SLURM_DIR), "BFCL_EXT_SERVER_COMMAND": "true"})
    for port in (f"$(touch {tmp_path}/ran)1", "2_0777", "08", "70000"):
        done = subprocess.run(["bash", str(SLURM_DIR / "server.sbatch")], capture_output=True, text=True,
                              env={**env, "SERVER_PORT": port}, timeout=60, check=False)
        assert done.returncode == 2, done.stderr
        assert f"SERVER_PORT must be a port number from 1 to 65535, not '{port}'" in done.stderr
    assert not (tmp_path / "ran").exists()
