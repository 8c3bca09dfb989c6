"""Shared by the end-to-end server-fault rows (server_faults, kills_and_signals, api_key): the real
``bfcl-ext run`` as a subprocess against the stand-in, read only the way a user would (the exit
code, stdout/stderr, the files under the output folder). Not a row module: the table skips every
module of tests/fault_cases/ whose name starts with ``_``.

Every entry on disk exactly once after the run that should finish the job is the table's own
check (each row sets ``Outcome.output_dir`` and ``expected_ids``); ``exactly_once`` here is for a
run in the middle of a row, before a rerun.
"""

from __future__ import annotations

import json
import subprocess
import tarfile
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bfcl_ext import bundle as bundles
from tests.fault_cases import Outcome
from tests.conftest import BFCL_EXT, StandinProcess, clean_environment, read_json, result_lines, run_bfcl_ext
from tests.support.waiting import exited, wait_until

MODEL = "bfcl-ext-standin"  # the stand-in's default served name
CATEGORY = "simple_python"
RUN_TIMEOUT = 240.0


def dataset_ids(limit: int | None = None) -> list[str]:
    """The ids of simple_python in file order (what ``--limit N`` takes the first N of)."""
    from bfcl_ext.bridge import dataset_path

    with dataset_path(CATEGORY).open(encoding="utf-8") as handle:
        ids = [json.loads(line)["id"] for line in handle if line.strip()]
    return ids[:limit] if limit else ids


def endpoint_env(standin: StandinProcess, **extra: str) -> dict[str, str]:
    return {"VLLM_ENDPOINT": "127.0.0.1", "VLLM_PORT": str(standin.port), **extra}


def run_args(out: Path, *extra: str, model: str = MODEL) -> list[str]:
    return ["run", "--skip-vllm", "--model", model, "--test-category", CATEGORY, "--output-dir", str(out),
            "--wait-timeout", "30", *extra]


def cli(args: Sequence[str], env: Mapping[str, str], cwd: Path, timeout: float = RUN_TIMEOUT
        ) -> subprocess.CompletedProcess[str]:
    return run_bfcl_ext(args, env=env, timeout=timeout, cwd=cwd)


def spawn(args: Sequence[str], env: Mapping[str, str], cwd: Path, name: str) -> subprocess.Popen[bytes]:
    """The runner as a background process (for signals and polling); output goes to files."""
    return subprocess.Popen(
        [*BFCL_EXT, *args], cwd=cwd, env=clean_environment(env),
        stdout=(cwd / f"{name}.stdout").open("wb"), stderr=(cwd / f"{name}.stderr").open("wb"),
    )


def output_of(cwd: Path, name: str) -> tuple[str, str]:
    return ((cwd / f"{name}.stdout").read_text(errors="replace"), (cwd / f"{name}.stderr").read_text(errors="replace"))


def completed(process: subprocess.Popen[bytes], cwd: Path, name: str) -> subprocess.CompletedProcess[str]:
    """A spawned run that has exited, as the table reads a run: exit code, stdout, stderr."""
    stdout, stderr = output_of(cwd, name)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def wait_exit(process: subprocess.Popen[bytes], timeout: float) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"bfcl-ext did not exit within {timeout:.0f}s") from None


def line_count(out: Path) -> int:
    return sum(path.read_bytes().count(b"\n") for path in (out / "result").rglob("*_result.json"))


def wait_for_lines(out: Path, count: int, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    wait_until(lambda: line_count(out) >= count, within=timeout, poll=0.02, what=f"{count} result lines",
               gone=exited(process, "bfcl-ext"))


def ids_on_disk(out: Path) -> list[str]:
    """Every result line's id; ``result_lines`` fails if any line does not parse."""
    return [line["id"] for line in result_lines(out)]


def assert_no_duplicates(out: Path) -> set[str]:
    ids = ids_on_disk(out)
    duplicated = [i for i, n in Counter(ids).items() if n > 1]
    assert not duplicated, f"duplicate result lines: {duplicated[:10]}"
    return set(ids)


def exactly_once(out: Path, expected: Sequence[str], label: str) -> None:
    """Every selected entry on disk exactly once, and nothing else (for a run before a rerun)."""
    counts = Counter(ids_on_disk(out))
    lost = sorted(set(expected) - set(counts))
    duplicated = sorted(i for i, n in counts.items() if n > 1)
    extra = sorted(set(counts) - set(expected))
    assert not lost, f"{label}: entries lost: {lost[:10]}"
    assert not duplicated, f"{label}: entries duplicated: {duplicated[:10]}"
    assert not extra, f"{label}: result lines for entries not selected: {extra[:10]}"


def summary_complete(out: Path, expected: Sequence[str]) -> dict[str, Any]:
    """The run finished the job: status complete, accuracy exactly 1.0 over every selected entry."""
    summary = read_json(out / "summary.json")
    assert summary["status"] == "complete", summary["status"]
    assert summary["categories"][CATEGORY]["accuracy"] == 1.0, summary["categories"]
    assert summary["categories"][CATEGORY]["total"] == len(expected)
    assert summary["entries"]["failed"] == 0
    return summary


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stdout + result.stderr, result.stderr[-3000:]


def assert_one_error_line(stderr: str, wanted: str) -> None:
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("bfcl-ext: error:")]
    assert len(errors) == 1 and wanted in errors[0], stderr[-3000:]


def asked(before: Mapping[str, Any], after: Mapping[str, Any]) -> Counter[str]:
    """Entries the stand-in answered between two stats snapshots, with how often."""
    delta = Counter(after["entries"])
    delta.subtract(before["entries"])
    return Counter({i: n for i, n in delta.items() if n})


def bundle_members(archive: Path) -> dict[str, bytes]:
    """A bundle's files by their path inside its top folder."""
    with tarfile.open(archive, "r:gz") as tar:
        return {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers() if m.isreg()}  # type: ignore[union-attr]


def forged_summary(ctx: Any, archive: Path, edit: Any) -> Outcome:
    """``archive`` with its summary.json edited by ``edit(summary)``, SHA256SUMS rewritten to match, verified."""
    files = bundle_members(archive)
    summary = json.loads(files["summary.json"])
    edit(summary)
    files["summary.json"] = json.dumps(summary, indent=2).encode()
    files[bundles.SUMS] = bundles.checksum_list(files)
    forged = ctx.tmp_path / "forged.tar.gz"
    bundles.write_archive(files, forged)
    return Outcome(run_bfcl_ext(["verify", str(forged)], cwd=ctx.tmp_path, timeout=300),
                   notes={"summary": summary, "members": files})
