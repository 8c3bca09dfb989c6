"""What produced a folder's answers, so that a resume never blends answers from different sources.

The first run in a folder records its identity in ``<output>/.bfcl-ext/identity.json``: the model
scored, the name it was served under, the model root the server lists, its revision, the server's
version and every sampling setting sent. A later run with a different identity is refused (exit 2,
each field that differs named); ``--fresh`` moves the old answers aside first. The URL and port are
not part of it: a resubmitted SLURM job lands on another node.

The request settings (max tokens, top_p, seed, extra body) are recorded only when set, so a folder
from before they existed, or from a run without them, keeps its identity; absent reads as unset.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bfcl_ext import manifest
from bfcl_ext.errors import ConfigError
from bfcl_ext.request_settings import IDENTITY_FIELDS

SET_ONLY_FIELDS = frozenset(IDENTITY_FIELDS)  # recorded only when set: absent means unset

IDENTITY_NAME = Path(".bfcl-ext") / "identity.json"
ANSWER_TREES = ("result", "score", "logs")
RUN_FILES = ("summary.json", "manifest.json")
FRESH_SETTING = "BFCL_EXT_FRESH/--fresh"


def identity(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The identity as recorded: plain JSON values, in a stable order."""
    return {name: fields[name] for name in sorted(fields)}


def differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Each field whose value differs, as ``name: recorded -> now``. Fields only one side knows are
    skipped (the server's are known only once it answers), except those recorded only when set."""
    names = (set(recorded) & set(current)) | (SET_ONLY_FIELDS & (set(recorded) | set(current)))
    return [
        f"{name}: {recorded.get(name)!r} -> {current.get(name)!r}"
        for name in sorted(names)
        if recorded.get(name) != current.get(name)
    ]


def has_answers(folder: Path) -> bool:
    result = folder / "result"
    return result.is_dir() and any(result.rglob("*_result.json"))


def check(folder: Path, current: Mapping[str, Any]) -> None:
    """Refuse to resume answers produced by another model, server or sampling; record the identity."""
    path = folder / IDENTITY_NAME
    recorded = _read(path)
    if recorded is not None and has_answers(folder):
        changed = differences(recorded, current)
        if changed:
            raise ConfigError(
                "BFCL_EXT_OUTPUT_DIR/--output-dir", str(folder),
                "holds answers from another source (" + "; ".join(changed) + "); use another folder, or "
                "--fresh to move the old answers aside and start again",
            )
    elif recorded is None and has_answers(folder):
        print(f"bfcl-ext: {folder}: answers without a recorded identity (an older bfcl-ext); resuming them as "
              "this run's", file=sys.stderr)
    _write(path, _merged(recorded or {}, current))


def _merged(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
    """The recorded identity updated with this run's; a set-only field this run leaves unset goes."""
    return {name: value for name, value in {**recorded, **current}.items()
            if name in current or name not in SET_ONLY_FIELDS}


def move_aside(folder: Path) -> Path | None:
    """``--fresh``: the old answers, scores, logs and records go to ``previous-<time>/`` beside them."""
    present = [name for name in (*ANSWER_TREES, *RUN_FILES, str(IDENTITY_NAME)) if (folder / name).exists()]
    if not present:
        return None
    target = folder / time.strftime("previous-%Y%m%dT%H%M%S")
    suffix = 0
    while target.exists():
        suffix += 1
        target = target.with_name(f"{target.name.split('.')[0]}.{suffix}")
    for name in present:
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(folder / name), str(destination))
    return target


def _read(path: Path) -> dict[str, Any] | None:
    if os.path.lexists(path) and not path.is_file():  # a FIFO put there would block the read forever
        raise ConfigError("BFCL_EXT_OUTPUT_DIR/--output-dir", str(path.parent.parent),
                          f"{path} is not a regular file; remove it to resume as this run's, or use --fresh")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        raise ConfigError("BFCL_EXT_OUTPUT_DIR/--output-dir", str(path.parent.parent),
                          f"{path} is damaged; delete it to resume as this run's, or use --fresh") from None
    return value if isinstance(value, dict) else None


def _write(path: Path, value: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_json(path, value)
