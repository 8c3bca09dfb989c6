"""What ran besides bfcl-ext: the server as its launcher describes it, and the images' identities.

A server bfcl-ext did not start cannot be asked for its flags, tool-call parser or GPUs: vLLM
reports only its version and models. Whoever starts it can write them down in a *server facts*
file (the vLLM image's entrypoint does when ``SERVE_FACTS_FILE`` is set), which bfcl-ext reads
(``BFCL_EXT_SERVER_FACTS``) and records in manifest.json.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bfcl_ext.errors import ConfigError

FACTS_SETTING = "BFCL_EXT_SERVER_FACTS/--server-facts"
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
APPTAINER_LABELS = Path("/.singularity.d/labels.json")  # inside an Apptainer container: its image's labels
TEXT_FACTS = ("served_model_name", "tool_call_parser", "generation_config", "image", "host", "started_at")
LIST_FACTS = ("command", "gpus")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ServerFacts:
    """A server facts file as read (its ``command`` still needs redacting before it is written out)."""

    path: Path
    values: dict[str, Any]

    @property
    def command(self) -> list[str] | None:
        return self.values.get("command")

    @property
    def tool_call_parser(self) -> str | None:
        return self.values.get("tool_call_parser")

    @property
    def gpus(self) -> list[str] | None:
        return self.values.get("gpus")

    @property
    def image(self) -> str | None:
        return self.values.get("image")


def load_server_facts(path: Path | None, served_name: str) -> ServerFacts | None:
    """Read and check the facts file; a missing, malformed or stale one is a ConfigError (exit 2)."""
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(FACTS_SETTING, str(path), "file not found (the vLLM image writes it when SERVE_FACTS_FILE "
                          "is set; leave the setting empty for a server that has none)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(FACTS_SETTING, str(path), f"cannot read ({error.__class__.__name__})") from None
    try:
        values = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(FACTS_SETTING, str(path), f"not JSON ({error.msg}, line {error.lineno})") from None
    if not isinstance(values, dict):
        raise ConfigError(FACTS_SETTING, str(path), "not a JSON object")
    for key in TEXT_FACTS:
        if values.get(key) is not None and not isinstance(values[key], str):
            raise ConfigError(FACTS_SETTING, str(path), f'"{key}" must be a string')
    for key in LIST_FACTS:
        value = values.get(key)
        if value is not None and not (isinstance(value, list) and all(isinstance(item, str) for item in value)):
            raise ConfigError(FACTS_SETTING, str(path), f'"{key}" must be a list of strings')
    declared = values.get("served_model_name")
    if declared and declared != served_name:
        raise ConfigError(FACTS_SETTING, str(path), f"describes a server of '{declared}', not of '{served_name}' "
                          "(a file left by an earlier server?)")
    return ServerFacts(path, values)


def image_identity(reference: str | None, labels_file: Path | None = None) -> dict[str, Any] | None:
    """An image as named (reference, image ID or SIF path) and its sha256 digest where one is knowable.

    ``repo@sha256:...`` and a bare image ID carry their digest; a SIF file is hashed. A plain
    ``repo:tag`` has no digest: the tag may move.
    """
    if not reference:
        return None
    identity: dict[str, Any] = {"reference": reference, "digest": None}
    if "@sha256:" in reference:
        identity["digest"] = "sha256:" + reference.rsplit("@sha256:", 1)[1]
    elif DIGEST.fullmatch(reference):
        identity["digest"] = reference
    elif Path(reference).is_file():
        identity["digest"] = "sha256:" + sha256_file(Path(reference))
    if labels_file is not None and labels_file.is_file():
        try:
            labels = json.loads(labels_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            labels = None
        if isinstance(labels, dict):
            identity["labels"] = {key: value for key, value in sorted(labels.items()) if key.startswith("org.")}
    return identity


def runner_labels_file(runner_image: str | None, apptainer_image: str | None) -> Path | None:
    """This container's labels, when the runner image is the Apptainer image we run in (its digest
    added or not: slurm/runner.sbatch hashes the SIF on the host, where its path is always valid)."""
    if not runner_image or not apptainer_image:
        return None
    return APPTAINER_LABELS if runner_image.split("@sha256:", 1)[0] == apptainer_image else None
