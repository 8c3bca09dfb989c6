"""What a manifest says of the server and the images beyond what vLLM reports (issue 6).

The server facts file is written by the vLLM image's real entrypoint (docker/vllm/entrypoint.sh,
with a harmless program in place of vLLM) and read by ``bfcl-ext run --skip-vllm --server-facts``
against the stand-in. The compose and SLURM tests repeat this with the files those set-ups write.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bfcl_ext import compare
from bfcl_ext.errors import EXIT_CONFIG, ConfigError
from bfcl_ext.provenance import image_identity, load_server_facts
from tests.conftest import assert_outputs_match_schemas, clean_environment, read_json, run_bfcl_ext, start_standin

ENTRYPOINT = Path(__file__).resolve().parents[1] / "docker" / "vllm" / "entrypoint.sh"
MODEL = "facts-model"
DIGEST = "sha256:" + "ab" * 32


def _write_facts_with_entrypoint(path: Path, **serve: str) -> subprocess.CompletedProcess[str]:
    """The image's entrypoint as the server would run it; `true` stands in for vLLM."""
    env = clean_environment()
    for name in ("SERVE_IMAGE", "APPTAINER_CONTAINER", "SINGULARITY_CONTAINER"):
        env.pop(name, None)
    env.update({"SERVE_MODEL": "/models/qwen", "SERVE_SERVED_MODEL_NAME": MODEL, "SERVE_COMMAND": "true",
                "SERVE_FACTS_FILE": str(path), **serve})
    return subprocess.run(["bash", str(ENTRYPOINT)], env=env, capture_output=True, text=True, timeout=60, check=False)


def _skip_run(
    base_url: str, out: Path, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_bfcl_ext(["run", "--skip-vllm", "--base-url", base_url, "--model", MODEL, "--test-category",
                         "simple_python", "--limit", "3", "--output-dir", str(out), *extra], env=env, timeout=300)


@pytest.fixture(scope="module")
def standin_url(tmp_path_factory: pytest.TempPathFactory) -> Any:
    standin = start_standin(tmp_path_factory.mktemp("facts-standin"), "--served-model-name", MODEL)
    try:
        yield standin.base_url
    finally:
        standin.stop()


def test_entrypoint_writes_the_facts_and_a_skip_run_records_them(tmp_path: Path, standin_url: str) -> None:
    facts_file = tmp_path / "server.json"
    sif = tmp_path / "vllm.sif"
    sif.write_bytes(b"an image file")
    written = _write_facts_with_entrypoint(facts_file, SERVE_TOOL_CALL_PARSER="qwen3_xml",
                                           SERVE_EXTRA_ARGS="--max-model-len 4096 --api-key=hunter2-secret",
                                           SERVE_IMAGE=str(sif))
    assert written.returncode == 0, written.stderr
    assert "hunter2-secret" not in facts_file.read_text()

    out = tmp_path / "out"
    done = _skip_run(standin_url, out, "--server-facts", str(facts_file))
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = read_json(out / "manifest.json")
    server = manifest["server"]
    assert server["tool_call_parser"] == "qwen3_xml"
    assert server["launched_with"][:3] == ["true", "--model", "/models/qwen"]
    assert "--max-model-len" in server["launched_with"]
    assert server["gpus"] == read_json(facts_file)["gpus"]
    assert server["facts"]["path"] == str(facts_file)
    assert manifest["sampling"]["generation_config"] == "vllm"
    assert manifest["images"]["server"] == {"reference": str(sif),
                                            "digest": "sha256:" + hashlib.sha256(b"an image file").hexdigest()}
    assert manifest["images"]["runner"] is None
    assert "hunter2-secret" not in (out / "manifest.json").read_text()
    assert_outputs_match_schemas(out)

    recorded = compare.facts(manifest, read_json(out / "summary.json"))
    assert recorded["server.tool_call_parser"] == "qwen3_xml"
    assert recorded["vllm.max-model-len"] == "4096"
    assert recorded["image.server"] == manifest["images"]["server"]["digest"]


def test_without_a_facts_file_the_parser_is_not_guessed(tmp_path: Path, standin_url: str) -> None:
    done = _skip_run(standin_url, tmp_path / "out")
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = read_json(tmp_path / "out" / "manifest.json")
    server = manifest["server"]
    assert (server["tool_call_parser"], server["launched_with"], server["gpus"], server["facts"]) == (None,) * 4
    assert manifest["sampling"]["generation_config"] is None
    assert manifest["images"] == {"runner": None, "server": None}
    assert_outputs_match_schemas(tmp_path / "out")


def test_a_hand_written_facts_file_is_redacted_and_images_given_as_settings_win(
    tmp_path: Path, standin_url: str
) -> None:
    facts_file = tmp_path / "facts.json"
    facts_file.write_text(json.dumps({"tool_call_parser": "hermes", "image": "ignored:tag",
                                      "command": ["vllm", "serve", "m", "--api-key", "sk-live-123"]}))
    sif = tmp_path / "runner.sif"
    sif.write_bytes(b"runner image")
    out = tmp_path / "out"
    done = _skip_run(standin_url, out, "--server-facts", str(facts_file), "--server-image", f"repo/vllm@{DIGEST}",
                     env={"APPTAINER_CONTAINER": str(sif)})
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = read_json(out / "manifest.json")
    assert "sk-live-123" not in (out / "manifest.json").read_text()
    assert manifest["server"]["launched_with"] == ["vllm", "serve", "m", "--api-key", "<redacted>"]
    assert manifest["server"]["tool_call_parser"] is None  # the command names none: the command wins
    assert manifest["images"]["server"] == {"reference": f"repo/vllm@{DIGEST}", "digest": DIGEST}
    # inside Apptainer the runner's own image is the SIF it runs from
    assert manifest["images"]["runner"] == {"reference": str(sif),
                                            "digest": "sha256:" + hashlib.sha256(b"runner image").hexdigest()}
    assert_outputs_match_schemas(out)


@pytest.mark.parametrize(("content", "message"), [
    (None, "file not found"),
    ("{not json", "not JSON (Expecting property name enclosed in double quotes, line 1)"),
    ("[1, 2]", "not a JSON object"),
    ('{"command": "vllm serve m"}', '"command" must be a list of strings'),
    ('{"tool_call_parser": 3}', '"tool_call_parser" must be a string'),
    ('{"served_model_name": "other-model"}', "describes a server of 'other-model', not of 'facts-model'"),
])
def test_a_bad_facts_file_is_one_clear_line_and_exit_2(tmp_path: Path, content: str | None, message: str) -> None:
    facts_file = tmp_path / "server.json"
    if content is not None:
        facts_file.write_text(content)
    with pytest.raises(ConfigError) as caught:
        load_server_facts(facts_file, MODEL)
    assert message in str(caught.value)

    done = _skip_run("http://127.0.0.1:9/v1", tmp_path / "out", "--server-facts", str(facts_file))
    assert done.returncode == EXIT_CONFIG
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "BFCL_EXT_SERVER_FACTS/--server-facts" in lines[0] and message in lines[0], lines
    assert str(facts_file) in lines[0] and "Traceback" not in done.stderr


def test_facts_of_a_managed_server_are_refused(tmp_path: Path) -> None:
    facts_file = tmp_path / "server.json"
    facts_file.write_text("{}")
    done = run_bfcl_ext(["run", "--model", MODEL, "--test-category", "simple_python", "--output-dir",
                         str(tmp_path / "out"), "--server-facts", str(facts_file)], timeout=120)
    assert done.returncode == EXIT_CONFIG
    assert "describes a server bfcl-ext did not start: use it with --skip-vllm" in done.stderr


def test_entrypoint_without_a_parser_records_none(tmp_path: Path) -> None:
    facts_file = tmp_path / "server.json"
    written = _write_facts_with_entrypoint(facts_file, SERVE_TOOL_CALL_PARSER="none", SERVE_GENERATION_CONFIG="none")
    assert written.returncode == 0, written.stderr
    facts = read_json(facts_file)
    assert (facts["tool_call_parser"], facts["generation_config"]) == (None, None)
    assert "--tool-call-parser" not in facts["command"] and "--generation-config" not in facts["command"]
    assert facts["served_model_name"] == MODEL and facts["image"] is None


def test_facts_that_cannot_be_written_do_not_stop_the_server(tmp_path: Path) -> None:
    facts_file = tmp_path / "missing-folder" / "server.json"
    written = _write_facts_with_entrypoint(facts_file)
    assert written.returncode == 0, written.stderr  # the server still starts
    assert "could not write the server facts" in written.stderr
    assert not facts_file.exists()


@pytest.mark.parametrize(("reference", "digest"), [
    (f"ghcr.io/org/bfcl-ext-runner:1.0@{DIGEST}", DIGEST),
    (DIGEST, DIGEST),
    ("bfcl-ext-runner:local", None),  # a tag may move: no digest claimed
])
def test_image_identity(reference: str, digest: str | None) -> None:
    assert image_identity(reference) == {"reference": reference, "digest": digest}


def test_image_identity_of_a_file_hashes_it_and_keeps_the_image_labels(tmp_path: Path) -> None:
    sif = tmp_path / "runner.sif"
    sif.write_bytes(os.urandom(3 << 20))
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"org.bfcl-ext.image-id": DIGEST, "org.label-schema.build-arch": "amd64",
                                  "maintainer": "x"}))
    identity = image_identity(str(sif), labels)
    assert identity == {"reference": str(sif), "digest": "sha256:" + hashlib.sha256(sif.read_bytes()).hexdigest(),
                        "labels": {"org.bfcl-ext.image-id": DIGEST, "org.label-schema.build-arch": "amd64"}}
    assert image_identity(None) is None and image_identity("") is None
