"""The "full" venv (runner + torch + sentence-transformers) that memory_vector's tests run in.

Plain Python (no pytest at import time), like vllm_cpu.py. The test venv (.venv) is torch-free,
as the default install is; the tests that load the embedding model run a script in this venv.

It is made by the install recipe itself, ``VENV=<dir> scripts/install.sh --full --no-compile``
(requirements/runner.lock, then requirements/full.lock, both --no-deps, then ``pip check``), in
``BFCL_EXT_TEST_FULL_VENV`` or ``<repo>/.venv-full``: about a minute and 1.5 GB, once; later
sessions reuse it when every pin of both lock files is installed and bfcl_ext comes from this
checkout. When it cannot be made, :func:`full_venv_python` raises :class:`FullVenvNotInstalled`:
the tests fail loudly rather than skip.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["FULL_VENV_ENV_VAR", "FullVenvNotInstalled", "full_venv_dir", "full_venv_python", "locked_pins"]

REPO_ROOT = Path(__file__).resolve().parents[2]
FULL_VENV_ENV_VAR = "BFCL_EXT_TEST_FULL_VENV"
LOCK_FILES = ("requirements/runner.lock", "requirements/full.lock")
INSTALL_COMMAND = ("bash", "scripts/install.sh", "--full", "--no-compile")
INSTALL_TIMEOUT_S = 900

# Run by the venv's python: what is missing or wrong, one line each; nothing when complete.
_PROBE = r"""
import importlib.metadata as md, pathlib, sys
from packaging.version import Version
repo, pins = pathlib.Path(sys.argv[1]), sys.argv[2:]
for pin in pins:
    name, want = pin.split("==")
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        print(f"{name} not installed (want {want})")
        continue
    if Version(have) != Version(want):
        print(f"{name} {have} installed, want {want}")
try:
    import bfcl_ext
except Exception as error:
    print(f"bfcl_ext does not import: {error!r}")
else:
    if repo not in pathlib.Path(bfcl_ext.__file__).resolve().parents:
        print(f"bfcl_ext comes from {bfcl_ext.__file__}, not from {repo}")
"""


class FullVenvNotInstalled(RuntimeError):
    """The full venv is missing, incomplete, or could not be made."""


def full_venv_dir() -> Path:
    configured = os.environ.get(FULL_VENV_ENV_VAR)
    return Path(configured).resolve() if configured else REPO_ROOT / ".venv-full"


def locked_pins() -> list[str]:
    """Every ``name==version`` of runner.lock and full.lock."""
    pins = []
    for rel in LOCK_FILES:
        for line in (REPO_ROOT / rel).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                if "==" not in line:
                    raise AssertionError(f"{rel}: {line!r} is not an exact pin")
                pins.append(line)
    return pins


def _clean_env() -> dict[str, str]:
    env = dict(os.environ)
    for var in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):  # the test venv's must not leak in
        env.pop(var, None)
    return env


def _problems(venv: Path) -> list[str]:
    python = venv / "bin" / "python"
    if not python.exists():
        return [f"{python} is missing"]
    probe = subprocess.run(
        [str(python), "-c", _PROBE, str(REPO_ROOT), *locked_pins()],
        capture_output=True, text=True, timeout=120, check=False, env=_clean_env(), cwd=venv,
    )
    if probe.returncode != 0:
        return [f"probe failed (exit {probe.returncode}): {probe.stderr.strip()[-1000:]}"]
    return probe.stdout.splitlines()


@contextlib.contextmanager
def _locked(venv: Path) -> Iterator[None]:
    """One maker at a time (two test sessions, or xdist workers)."""
    # Outside the checkout, so that git never sees it.
    key = hashlib.sha256(str(venv).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"bfcl-ext-full-venv-{key}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_ready: dict[Path, Path] = {}
last_install_seconds: float | None = None  # how long this process spent making it (None: reused)


def full_venv_python() -> Path:
    """The python of a complete full venv, made first if needed (see the module's docstring)."""
    global last_install_seconds
    venv = full_venv_dir()
    if venv in _ready:
        return _ready[venv]
    with _locked(venv):
        problems = _problems(venv)
        if problems:
            t0 = time.monotonic()
            proc = subprocess.run(
                INSTALL_COMMAND, cwd=REPO_ROOT, env={**_clean_env(), "VENV": str(venv)},
                capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False,
            )
            last_install_seconds = time.monotonic() - t0
            if proc.returncode != 0:
                raise FullVenvNotInstalled(
                    f"`VENV={venv} {' '.join(INSTALL_COMMAND)}` failed (exit {proc.returncode}) after "
                    f"{last_install_seconds:.0f} s; it was needed because: {'; '.join(problems[:5])}\n"
                    f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
                )
            problems = _problems(venv)
            if problems:
                raise FullVenvNotInstalled(
                    f"{venv} is still incomplete after `{' '.join(INSTALL_COMMAND)}`: {'; '.join(problems[:10])}"
                )
    _ready[venv] = venv / "bin" / "python"
    return _ready[venv]


def main() -> int:
    t0 = time.monotonic()
    python = full_venv_python()
    how = "made" if last_install_seconds is not None else "already complete"
    print(f"full venv {how}: {python} ({time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
