"""summary.json (what was scored) and manifest.json (how), written atomically, secrets redacted.

Secrets are redacted on values (inside strings), never by replacing text in the JSON written:
a key such as ``1`` or ``"`` must not turn ``"accuracy": 1.0`` into something that is not JSON.
A key shorter than ``MIN_SEARCHED_SECRET`` characters is not searched for at all: it cannot be told
apart from ordinary text (every ``e`` in every name), and what bfcl-ext itself records never holds a
key anyway (settings, command line and environment lose theirs by name).
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bfcl_ext import __version__
from bfcl_ext.config import Settings, is_secret_name

REDACTED = "<redacted>"
MIN_SEARCHED_SECRET = 8  # characters: a shorter key is everywhere in ordinary text
RECORDED_ENV_PREFIXES = ("VLLM_", "BFCL_EXT_", "HF_", "SLURM_JOB", "SLURM_NODELIST", "CUDA_VISIBLE_DEVICES", "OPENAI_")
SECRET_FLAGS = ("--api-key",)


def redact_argv(argv: Sequence[str]) -> list[str]:
    """``--api-key X`` and ``--api-key=X`` lose their value."""
    cleaned: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            cleaned.append(REDACTED)
            hide_next = False
        elif arg in SECRET_FLAGS:
            cleaned.append(arg)
            hide_next = True
        elif any(arg.startswith(flag + "=") for flag in SECRET_FLAGS):
            cleaned.append(arg.split("=", 1)[0] + "=" + REDACTED)
        else:
            cleaned.append(arg)
    return cleaned


def flag_value(argv: Sequence[str], flag: str) -> str | None:
    """The value of ``--flag VALUE`` or ``--flag=VALUE`` in a command line (the last one wins)."""
    value = None
    for index, arg in enumerate(argv):
        if arg == flag and index + 1 < len(argv):
            value = argv[index + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def redact_environment(environ: Mapping[str, str]) -> dict[str, str]:
    return {
        key: (REDACTED if is_secret_name(key) else value)
        for key, value in sorted(environ.items())
        if key.startswith(RECORDED_ENV_PREFIXES)
    }


def secrets_of(settings: Settings) -> tuple[str, ...]:
    """The run's secrets: the server's key and the SerpAPI key (those that are set)."""
    return tuple(secret for secret in (settings.endpoint.api_key, settings.search_api_key) if secret)


def _searched(secrets: Sequence[str | None]) -> tuple[str, ...]:
    """The secrets worth searching for, longest first (a key inside another goes after it)."""
    return tuple(sorted({s for s in secrets if s and len(s) >= MIN_SEARCHED_SECRET}, key=len, reverse=True))


def _replace(text: str, searched: Sequence[str]) -> str:
    for secret in searched:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def scrub(text: str, secrets: Sequence[str | None]) -> str:
    """Remove secret values from free text (a server log line, an error message)."""
    return _replace(text, _searched(secrets))


def redact_value(value: Any, secrets: Sequence[str | None]) -> Any:
    """``value`` (JSON-like data) with every secret replaced inside its strings, keys included;
    numbers, booleans and None untouched. Other objects become ``str(object)``, as ``write_json``
    writes them."""
    searched = _searched(secrets)
    return _redacted(value, searched) if searched else value


def _redacted(value: Any, searched: Sequence[str]) -> Any:
    if isinstance(value, str):
        return _replace(value, searched)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, Mapping):
        return {(_replace(k, searched) if isinstance(k, str) else k): _redacted(v, searched)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redacted(item, searched) for item in value]
    return _replace(str(value), searched)


def write_json(path: Path, payload: Mapping[str, Any], secrets: Sequence[str | None] = ()) -> None:
    """Write ``payload`` to ``path`` via a temporary file and rename: never half a file.
    ``secrets`` are redacted on values before serialisation (see ``redact_value``)."""
    text = json.dumps(redact_value(payload, secrets), indent=2, sort_keys=True, default=str) + "\n"
    _replace_file(path, text.encode("utf-8"))


def _replace_file(path: Path, data: bytes) -> None:
    """``path`` now holds ``data``, or (on a crash) its old content: a temporary file, then a rename."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = None
    with temporary.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    if mode is not None:
        os.chmod(temporary, mode)
    os.replace(temporary, path)


# --- files written by others (bfcl-eval's answers and scores, a server log) ---------------------


def scrub_files(root: Path, secrets: Sequence[str | None]) -> list[Path]:
    """Rewrite, atomically, every file under ``root`` that holds a secret (a server may echo the key
    back, in an error body that BFCL then records as the answer); return the files rewritten.

    JSON documents and JSON-lines files are parsed and the secret replaced inside their strings,
    CSV files cell by cell, anything else as text. Files without the secret's bytes (raw or
    JSON-escaped) are only read: cheap when nothing matches. Links are not followed.
    """
    searched = _searched(secrets)
    if not searched:
        return []
    needles = _needles(searched)
    rewritten: list[Path] = []
    for folder, folders, files in os.walk(root):
        folders.sort()
        for name in sorted(files):
            path = Path(folder, name)
            if path.is_symlink() or not path.is_file():
                continue
            try:
                data = path.read_bytes()
            except OSError:
                continue
            if not any(needle in data for needle in needles):
                continue
            cleaned = _scrubbed_bytes(path, data, searched)
            if cleaned != data:
                _replace_file(path, cleaned)
                rewritten.append(path)
    return rewritten


def _forms(secret: str) -> set[str]:
    """How a secret can appear in a file's text: as is, and escaped inside a JSON string."""
    return {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}


def _needles(searched: Sequence[str]) -> set[bytes]:
    return {form.encode("utf-8") for secret in searched for form in _forms(secret)}


def _scrubbed_bytes(path: Path, data: bytes, searched: Sequence[str]) -> bytes:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        for secret in searched:
            data = data.replace(secret.encode("utf-8"), REDACTED.encode("utf-8"))
        return data
    if path.suffix.lower() == ".csv":
        return _scrubbed_csv(text, searched).encode("utf-8")
    return _scrubbed_json_or_text(text, searched).encode("utf-8")


def _scrubbed_json_or_text(text: str, searched: Sequence[str]) -> str:
    """A JSON document keeps its layout (one line or indented); JSON lines are done line by line."""
    stripped = text.strip()
    if stripped.startswith(("{", "[", '"')):
        try:
            document = json.loads(text)
        except ValueError:
            pass
        else:
            if "\n" not in stripped:
                return json.dumps(_redacted(document, searched), ensure_ascii=False) + text[len(text.rstrip()):]
            return json.dumps(_redacted(document, searched), indent=2) + "\n"
    return "".join(_scrubbed_line(line, searched) for line in text.splitlines(keepends=True))


def _scrubbed_line(line: str, searched: Sequence[str]) -> str:
    body = line.rstrip("\r\n")
    ending = line[len(body):]
    if not any(form in body for secret in searched for form in _forms(secret)):
        return line
    try:
        value = json.loads(body)
    except ValueError:
        return _replace(body, searched) + ending  # not JSON: a log line, a torn line
    return json.dumps(_redacted(value, searched), ensure_ascii=False) + ending


def _scrubbed_csv(text: str, searched: Sequence[str]) -> str:
    """Cell by cell, written back as bfcl-eval writes its tables (comma-separated, one row a line)."""
    ending = "\r\n" if "\r\n" in text else "\n"
    rows = [[_replace(cell, searched) for cell in row] for row in csv.reader(io.StringIO(text, newline=""))]
    out = io.StringIO()
    csv.writer(out, lineterminator=ending).writerows(rows)
    written = out.getvalue()
    return written if text.endswith(("\n", "\r")) else written[: -len(ending)]


def source_commit() -> str | None:
    """The git commit of the bfcl_ext source when it runs from a checkout, else None."""
    package_dir = Path(__file__).resolve().parent
    if shutil.which("git") is None:
        return None
    try:
        result = subprocess.run(
            ["git", "-C", str(package_dir), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (result.stdout.strip() or None) if result.returncode == 0 else None


def gpus() -> list[str]:
    """GPU names from nvidia-smi when present (managed mode runs beside the GPU)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        result = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def host_facts() -> dict[str, Any]:
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "bfcl_ext": __version__,
        "bfcl_ext_commit": source_commit(),
        "gpus": gpus(),
    }
