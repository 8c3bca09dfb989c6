"""Records: secrets redacted on values (never by editing the JSON text), and a key the server echoed
scrubbed from every file of the output folder, each file still valid."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bfcl_ext import manifest
from bfcl_ext.config import resolve
from bfcl_ext.manifest import MIN_SEARCHED_SECRET, REDACTED, redact_value, scrub, scrub_files, secrets_of, write_json

PAYLOAD = {
    "accuracy": 1.0, "correct": 10, "total": 10, "partial": True, "limit": None, "ratio": 0.5, "big": 1e-7,
    "model": "bfcl-ext-standin", "ids": ["simple_python_0", "simple_python_1"], "note": 'say "hi" \\ 1.0 true',
}
SHORT_KEYS = ["1", "0", "true", '"', "\\", "e", "EMPTY", "1.0", "null", "}", ":"]
KEY = "sk-live-0123456789abcdef"


@pytest.mark.parametrize("key", SHORT_KEYS)
def test_a_short_key_leaves_the_json_valid_and_every_value_intact(tmp_path: Path, key: str) -> None:
    path = tmp_path / "summary.json"
    write_json(path, PAYLOAD, [key, None])
    assert json.loads(path.read_text()) == PAYLOAD


@pytest.mark.parametrize("key", [KEY, 'sk-"q"\\b: 1.0, true}-7f3a', "ключ-секрет-42", "12345678"])
def test_a_key_is_redacted_inside_strings_and_numbers_stay_numbers(tmp_path: Path, key: str) -> None:
    payload = {
        "accuracy": 1.0, "n": 12345678, "flag": True, "none": None,
        "echo": f"Error code: 400 - key {key} refused", "list": [key, 2.5, {"deep": f"x{key}x"}],
        f"name-{key}": "a key as a key", "path": Path(f"/tmp/{key}"),
    }
    path = tmp_path / "manifest.json"
    write_json(path, payload, [key])
    written = json.loads(path.read_text())
    strings = json.dumps({k: v for k, v in written.items() if k != "n"})  # the number stays a number
    assert key not in strings and json.dumps(key)[1:-1] not in strings
    assert written["accuracy"] == 1.0 and written["n"] == 12345678 and written["flag"] is True
    assert written["none"] is None
    assert written["echo"] == f"Error code: 400 - key {REDACTED} refused"
    assert written["list"] == [REDACTED, 2.5, {"deep": f"x{REDACTED}x"}]
    assert written[f"name-{REDACTED}"] == "a key as a key"
    assert written["path"] == f"/tmp/{REDACTED}"


def test_the_longer_of_two_overlapping_keys_goes_first() -> None:
    assert redact_value({"s": "abcdefgh-ijkl"}, ["abcdefgh", "abcdefgh-ijkl"]) == {"s": REDACTED}
    assert scrub("x abcdefgh-ijkl y", ["abcdefgh", "abcdefgh-ijkl"]) == f"x {REDACTED} y"


def test_nothing_to_redact_returns_the_same_object() -> None:
    assert redact_value(PAYLOAD, [None, "", "e"]) is PAYLOAD
    assert scrub("e1", ["e", "1"]) == "e1"
    assert len("token-abc") >= MIN_SEARCHED_SECRET


def test_write_json_leaves_no_temporary_file(tmp_path: Path) -> None:
    write_json(tmp_path / "summary.json", PAYLOAD)
    write_json(tmp_path / "summary.json", PAYLOAD, [KEY])
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_secrets_of_names_both_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = resolve({}, {"VLLM_API_KEY": "sk-server-1234", "SERPAPI_API_KEY": "serp-9876543"})
    assert set(secrets_of(settings)) == {"sk-server-1234", "serp-9876543"}
    assert secrets_of(resolve({}, {})) == ()


# ---------------------------------------------------------------- files written by others


def _output_folder(root: Path, key: str) -> dict[str, Path]:
    """An output folder as a run leaves it, the key echoed into some of its files."""
    result = root / "result" / "m" / "non_live"
    score = root / "score" / "m" / "non_live"
    result.mkdir(parents=True)
    score.mkdir(parents=True)
    (root / "logs").mkdir()
    echo = f"Error during inference: Error code: 400 - {{'error': {{'message': 'refused for the key {key}'}}}}"
    files = {
        "result": result / "BFCL_v4_simple_python_result.json",
        "score": score / "BFCL_v4_simple_python_score.json",
        "csv": root / "score" / "data_overall.csv",
        "log": root / "logs" / "vllm-server.log",
        "pretty": root / "summary.json",
        "one_line": root / "one.json",
        "clean": root / "score" / "data_live.csv",
        "binary": root / "blob.bin",
    }
    files["result"].write_text(
        json.dumps({"id": "simple_python_0", "result": "[f(x=1)]", "latency": 1.5}) + "\n"
        + json.dumps({"id": "simple_python_1", "result": echo, "error_type": "BadRequestError"}) + "\n"
        + json.dumps({"id": "simple_python_2", "result": "[g(y=2.0)]", "latency": 0.25}) + "\n"
    )
    files["score"].write_text(
        json.dumps({"accuracy": 0.5, "correct_count": 1, "total_count": 2}) + "\n"
        + json.dumps({"id": "simple_python_1", "valid": False, "model_result_raw": echo}, ensure_ascii=True) + "\n"
    )
    files["csv"].write_text(f"Rank,Overall Acc,Model,Note\n1,50.00%,m,seen {key} here\n2,40.00%,other,n/a")
    files["log"].write_text(f"INFO args: --api-key {key} --port 8000\nINFO ready\n")
    files["pretty"].write_text(json.dumps({"accuracy": 1.0, "echo": key, "n": [1, 2]}, indent=2) + "\n")
    files["one_line"].write_text(json.dumps({"echo": [key], "x": 1.0}))
    files["clean"].write_text("Rank,Overall Acc,Model\n1,50.00%,m")
    files["binary"].write_bytes(b"\xff\xfe" + key.encode() + b"\x00\x01")
    return files


def test_scrub_files_removes_an_echoed_key_everywhere_and_keeps_every_file_valid(tmp_path: Path) -> None:
    files = _output_folder(tmp_path, KEY)
    clean_before = files["clean"].stat()
    os.chmod(files["result"], 0o640)
    rewritten = scrub_files(tmp_path, [KEY, None])
    assert set(rewritten) == {files[name] for name in ("result", "score", "csv", "log", "pretty", "one_line", "binary")}
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    lines = [json.loads(line) for line in files["result"].read_text().splitlines()]
    assert [line["id"] for line in lines] == ["simple_python_0", "simple_python_1", "simple_python_2"]
    assert lines[0] == {"id": "simple_python_0", "result": "[f(x=1)]", "latency": 1.5}
    assert lines[2]["latency"] == 0.25 and REDACTED in lines[1]["result"]
    assert files["result"].stat().st_mode & 0o777 == 0o640
    header, entry = (json.loads(line) for line in files["score"].read_text().splitlines())
    assert header == {"accuracy": 0.5, "correct_count": 1, "total_count": 2} and REDACTED in entry["model_result_raw"]
    assert files["csv"].read_text() == (f"Rank,Overall Acc,Model,Note\n1,50.00%,m,seen {REDACTED} here\n"
                                        "2,40.00%,other,n/a")
    assert files["log"].read_text() == f"INFO args: --api-key {REDACTED} --port 8000\nINFO ready\n"
    assert json.loads(files["pretty"].read_text()) == {"accuracy": 1.0, "echo": REDACTED, "n": [1, 2]}
    assert files["one_line"].read_text() == json.dumps({"echo": [REDACTED], "x": 1.0}, ensure_ascii=False)
    assert files["binary"].read_bytes() == b"\xff\xfe" + REDACTED.encode() + b"\x00\x01"
    after = files["clean"].stat()
    assert (after.st_ino, after.st_mtime_ns) == (clean_before.st_ino, clean_before.st_mtime_ns), "rewrote a clean file"
    assert not list(tmp_path.rglob("*.tmp")), "a temporary file was left"
    assert scrub_files(tmp_path, [KEY]) == [], "a second pass finds nothing"


def test_scrub_files_finds_a_key_written_json_escaped(tmp_path: Path) -> None:
    key = 'ключ-"секрет"-42'
    path = tmp_path / "result.json"
    path.write_text(json.dumps({"id": "a", "result": f"echo {key}", "n": 3}) + "\n")  # \\u escapes, \\" quotes
    assert key.encode() not in path.read_bytes()
    assert scrub_files(tmp_path, [key]) == [path]
    assert json.loads(path.read_text()) == {"id": "a", "result": f"echo {REDACTED}", "n": 3}


def test_a_short_key_is_not_searched_for_in_files(tmp_path: Path) -> None:
    files = _output_folder(tmp_path, "e")
    before = {path: path.read_bytes() for path in files.values()}
    assert scrub_files(tmp_path, ["e", "1", '"']) == []
    assert {path: path.read_bytes() for path in files.values()} == before


def test_scrub_files_does_not_follow_links(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "elsewhere.log").write_text(f"key {KEY}\n")
    root = tmp_path / "out"
    root.mkdir()
    (root / "linked").symlink_to(outside, target_is_directory=True)
    (root / "file-link.log").symlink_to(outside / "elsewhere.log")
    assert scrub_files(root, [KEY]) == []
    assert KEY in (outside / "elsewhere.log").read_text()


def test_a_torn_json_line_is_scrubbed_as_text(tmp_path: Path) -> None:
    path = tmp_path / "BFCL_v4_x_result.json"
    path.write_text(json.dumps({"id": "a", "result": "ok"}) + "\n" + '{"id": "b", "result": "' + KEY)
    scrub_files(tmp_path, [KEY])
    assert path.read_text() == json.dumps({"id": "a", "result": "ok"}) + "\n" + '{"id": "b", "result": "' + REDACTED


def test_manifest_module_keeps_its_old_names() -> None:
    assert manifest.scrub("key sk-abcdefgh!", ["sk-abcdefgh"]) == f"key {REDACTED}!"
    assert manifest.redact_argv(["run", "--api-key", "k", "--api-key=k2"]) == ["run", "--api-key", REDACTED,
                                                                               f"--api-key={REDACTED}"]
