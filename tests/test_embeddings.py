"""memory_vector's embedding model: found offline (setting or Hugging Face cache), loaded by
bfcl-eval's own ``SentenceTransformer("all-MiniLM-L6-v2")`` call from that folder, recorded.

Discovery, errors and identity run here, in the torch-free test venv. Loading runs in the full venv
(tests/support/full_venv.py: made once with ``scripts/install.sh --full``), in a subprocess that
imports bfcl-eval's memory_vector module and encodes with it, with sockets blocked.
"""

from __future__ import annotations

import os
import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import threading
import types
from pathlib import Path
from typing import Any

import pytest

from bfcl_ext import embeddings
from bfcl_ext.embeddings import (
    EMBEDDING_SETTING,
    MEMORY_VECTOR_MODULE,
    embedding_identity,
    require_embedding_packages,
    resolve_embedding_model,
    use_embedding_model,
)
from bfcl_ext.errors import EXIT_CONFIG, ConfigError
from tests.support import tiny_embedding
from tests.support.full_venv import full_venv_python
from tests.support.tiny_embedding import make_tiny_embedding_cache, make_tiny_embedding_model

HF_ENV = ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME", "SENTENCE_TRANSFORMERS_HOME")
REPO_DIR = "models--sentence-transformers--all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_embedding_model(tmp_path_factory.mktemp("tiny-embedding") / "model")


@pytest.fixture
def hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HF_HOME, and no other cache setting inherited from the machine."""
    for var in HF_ENV:
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "hf-home"
    home.mkdir()
    monkeypatch.setenv("HF_HOME", str(home))
    return home


def config_error(excinfo: pytest.ExceptionInfo[ConfigError]) -> str:
    message = str(excinfo.value)
    assert excinfo.value.exit_code == EXIT_CONFIG
    assert "\n" not in message, f"not one line: {message!r}"
    return message


# ------------------------------------------------------------------------ the setting


def test_setting_folder_is_used_as_given(tiny_folder: Path, hf_home: Path) -> None:
    assert resolve_embedding_model(tiny_folder, os.environ) == tiny_folder.resolve()


def test_setting_relative_folder_becomes_absolute(tiny_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tiny_folder.parent)
    resolved = resolve_embedding_model(Path(tiny_folder.name), os.environ)
    assert resolved.is_absolute() and resolved == tiny_folder.resolve()


def test_setting_wins_over_the_cache(tiny_folder: Path, hf_home: Path) -> None:
    make_tiny_embedding_cache(hf_home / "hub")
    assert resolve_embedding_model(tiny_folder, os.environ) == tiny_folder.resolve()


def test_setting_missing_folder_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ConfigError) as excinfo:
        resolve_embedding_model(missing, os.environ)
    message = config_error(excinfo)
    assert message.startswith(f"{EMBEDDING_SETTING}={str(missing)!r}: does not exist")
    assert excinfo.value.setting == EMBEDDING_SETTING


def test_setting_empty_folder_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as excinfo:
        resolve_embedding_model(tmp_path, os.environ)
    message = config_error(excinfo)
    assert message.startswith(f"{EMBEDDING_SETTING}={str(tmp_path)!r}")
    assert "no modules.json or config.json" in message


def test_setting_file_is_a_config_error(tiny_folder: Path) -> None:
    with pytest.raises(ConfigError) as excinfo:
        resolve_embedding_model(tiny_folder / "modules.json", os.environ)
    assert "is not a folder" in config_error(excinfo)


def test_setting_folder_without_weights_is_a_config_error(tiny_folder: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_folder, tmp_path / "no-weights")
    (copy / "model.safetensors").unlink()
    with pytest.raises(ConfigError) as excinfo:
        resolve_embedding_model(copy, os.environ)
    assert "has no weights" in config_error(excinfo)


# ------------------------------------------------------------------------ the Hugging Face cache


def test_cache_hit_through_hf_home(hf_home: Path) -> None:
    snapshot = make_tiny_embedding_cache(hf_home / "hub")
    found = resolve_embedding_model(None, os.environ)
    assert found == snapshot
    assert found.parent.name == "snapshots" and found.parent.parent.name == REPO_DIR
    assert (found / "modules.json").is_symlink()  # the snapshot, not the blob it links to


def test_cache_hit_through_hf_hub_cache_before_hf_home(hf_home: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = make_tiny_embedding_cache(tmp_path / "elsewhere")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert resolve_embedding_model(None, os.environ) == snapshot


def test_cache_hit_through_sentence_transformers_home(hf_home: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = make_tiny_embedding_cache(tmp_path / "st-home")
    monkeypatch.setenv("SENTENCE_TRANSFORMERS_HOME", str(tmp_path / "st-home"))
    assert resolve_embedding_model(None, os.environ) == snapshot


def test_cache_lookup_agrees_with_huggingface_hub(hf_home: Path) -> None:
    """Our offline lookup and huggingface_hub's own find the same snapshot in the tiny cache
    (which also checks that the tiny cache is laid out as huggingface_hub lays one out)."""
    from huggingface_hub import snapshot_download, try_to_load_from_cache

    cache = hf_home / "hub"
    snapshot = make_tiny_embedding_cache(cache)
    hub_says = snapshot_download(tiny_embedding.HUB_REPO_ID, cache_dir=cache, local_files_only=True)
    assert Path(hub_says) == resolve_embedding_model(None, os.environ) == snapshot
    weights = try_to_load_from_cache(tiny_embedding.HUB_REPO_ID, "model.safetensors", cache_dir=cache)
    assert isinstance(weights, str) and Path(weights) == snapshot / "model.safetensors"


def test_cache_miss_is_a_config_error_saying_where_and_how(hf_home: Path) -> None:
    with pytest.raises(ConfigError) as excinfo:
        resolve_embedding_model(None, os.environ)
    message = config_error(excinfo)
    assert message.startswith(f"{EMBEDDING_SETTING}='': ")
    assert f"looked in {hf_home / 'hub'} (not there)" in message
    assert "sentence-transformers/all-MiniLM-L6-v2" in message
    assert "never downloads" in message and "HF_HOME" in message
    assert f"set {EMBEDDING_SETTING} to a local copy" in message


def test_cache_with_missing_blobs_is_a_config_error(hf_home: Path) -> None:
    snapshot = make_tiny_embedding_cache(hf_home / "hub")
    shutil.rmtree(hf_home / "hub" / REPO_DIR / "blobs")
    with pytest.raises(ConfigError) as excinfo:
        resolve_embedding_model(None, os.environ)
    message = config_error(excinfo)
    assert f"{snapshot} (is not a sentence-transformers model folder" in message


def test_cache_without_refs_main_takes_a_single_snapshot_only(hf_home: Path) -> None:
    snapshot = make_tiny_embedding_cache(hf_home / "hub")
    (hf_home / "hub" / REPO_DIR / "refs" / "main").unlink()
    assert resolve_embedding_model(None, os.environ) == snapshot
    shutil.copytree(snapshot, snapshot.with_name("0" * 40), symlinks=True)  # which one is "main"?
    with pytest.raises(ConfigError):
        resolve_embedding_model(None, os.environ)


# ------------------------------------------------------------------------ packages and loading, no torch


def test_default_install_is_torch_free_and_says_how_to_get_it() -> None:
    """This venv is the default install: memory_vector's packages are absent, and the error says
    how to add them."""
    missing = [name for name in ("torch", "sentence_transformers") if importlib.util.find_spec(name) is None]
    assert missing == ["torch", "sentence_transformers"], f"the default install has {missing} missing only"
    with pytest.raises(ConfigError) as excinfo:
        require_embedding_packages()
    message = config_error(excinfo)
    assert message.startswith("BFCL_EXT_TEST_CATEGORY/--test-category='memory_vector': ")
    assert "torch, sentence_transformers not installed in" in message
    assert "scripts/install.sh --full" in message and "WITH_MEMORY_VECTOR=1" in message


def test_use_embedding_model_checks_the_folder_then_the_packages(tiny_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as excinfo:
        use_embedding_model(tmp_path)
    assert "no modules.json or config.json" in config_error(excinfo)
    with pytest.raises(ConfigError) as excinfo:
        use_embedding_model(tiny_folder)
    assert "scripts/install.sh --full" in config_error(excinfo)
    assert "sentence_transformers" not in sys.modules, "no import was attempted before the check"


class _FakeSentenceTransformer:
    """Stands in for sentence_transformers.SentenceTransformer: records what it was asked to load."""

    def __init__(self, model_name_or_path: Any = None, **kwargs: Any) -> None:
        self.loaded = model_name_or_path
        self.kwargs = kwargs


@pytest.fixture
def fake_sentence_transformers(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """A sentence_transformers module without torch, and embeddings' patch state reset."""
    module = types.ModuleType("sentence_transformers")
    module.SentenceTransformer = _FakeSentenceTransformer  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sentence_transformers", module)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name in ("torch", "sentence_transformers", "faiss")
                        else real_find_spec(name, *a))
    monkeypatch.setattr(embeddings, "_RedirectingSentenceTransformer", None)
    monkeypatch.setattr(embeddings, "_target", None)
    return module


def test_redirect_maps_only_bfcl_model_name(fake_sentence_transformers: types.ModuleType, tiny_folder: Path) -> None:
    use_embedding_model(tiny_folder)
    cls = fake_sentence_transformers.SentenceTransformer
    assert cls is not _FakeSentenceTransformer and issubclass(cls, _FakeSentenceTransformer)
    for name in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        encoder = cls(name, device="cpu")
        assert encoder.loaded == str(tiny_folder)
        assert encoder.kwargs == {"device": "cpu", "local_files_only": True}
        assert encoder.bfcl_ext_source == tiny_folder
    other = cls("sentence-transformers/all-mpnet-base-v2", device="cpu")
    assert other.loaded == "sentence-transformers/all-mpnet-base-v2" and other.kwargs == {"device": "cpu"}
    assert other.bfcl_ext_source is None


def test_use_embedding_model_is_idempotent_and_thread_safe(fake_sentence_transformers: types.ModuleType,
                                                           tiny_folder: Path) -> None:
    errors: list[BaseException] = []
    classes: list[type] = []

    def call() -> None:
        try:
            use_embedding_model(tiny_folder)
            classes.append(fake_sentence_transformers.SentenceTransformer)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=call) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(classes) == 16 and len(set(classes)) == 1
    assert classes[0].__mro__[1] is _FakeSentenceTransformer, "subclassed once, not a subclass of a subclass"


def test_use_embedding_model_after_memory_vector_was_imported_is_refused(
    fake_sentence_transformers: types.ModuleType, tiny_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    imported = types.ModuleType(MEMORY_VECTOR_MODULE)
    imported.ENCODER = _FakeSentenceTransformer("all-MiniLM-L6-v2")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, MEMORY_VECTOR_MODULE, imported)
    with pytest.raises(RuntimeError, match="was imported before use_embedding_model"):
        use_embedding_model(tiny_folder)


# ------------------------------------------------------------------------ identity and the tiny model


def test_identity_is_the_same_for_the_folder_and_the_cache_snapshot(tiny_folder: Path, hf_home: Path) -> None:
    snapshot = make_tiny_embedding_cache(hf_home / "hub")
    folder_id, cache_id = embedding_identity(tiny_folder), embedding_identity(snapshot)
    assert folder_id["sha256"] == cache_id["sha256"]
    assert folder_id["files"] == cache_id["files"]
    assert folder_id["name"] == cache_id["name"] == "all-MiniLM-L6-v2"
    assert folder_id["path"] == str(tiny_folder) and folder_id["repo_id"] is folder_id["revision"] is None
    assert cache_id["repo_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert cache_id["revision"] == snapshot.name
    assert {"model.safetensors", "config.json", "modules.json", "tokenizer.json", "vocab.txt",
            "1_Pooling/config.json"} <= set(folder_id["files"])
    assert "README.md" not in folder_id["files"]
    listing = "".join(f"{digest}  {rel}\n" for rel, digest in sorted(folder_id["files"].items()))
    assert folder_id["sha256"] == hashlib.sha256(listing.encode()).hexdigest()
    assert folder_id["files"]["model.safetensors"] == hashlib.sha256(
        (tiny_folder / "model.safetensors").read_bytes()).hexdigest()
    json.dumps(folder_id)  # goes into manifest.json as is


def test_identity_changes_with_any_weight_byte(tiny_folder: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_folder, tmp_path / "changed")
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (copy / "model.safetensors").write_bytes(bytes(data))
    assert embedding_identity(copy)["sha256"] != embedding_identity(tiny_folder)["sha256"]


def test_tiny_model_is_deterministic_and_self_consistent(tiny_folder: Path) -> None:
    from tokenizers import Tokenizer

    files = tiny_embedding.model_files()
    assert files == tiny_embedding.model_files(), "two builds differ"
    config = json.loads(files["config.json"])
    vocab = files["vocab.txt"].decode().splitlines()
    assert config["vocab_size"] == len(vocab) and vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert config["hidden_size"] == tiny_embedding.HIDDEN_SIZE == 32 and config["num_hidden_layers"] == 2
    tok = Tokenizer.from_file(str(tiny_folder / "tokenizer.json"))
    encoded = tok.encode("The user prefers green tea.")
    assert encoded.tokens[0] == "[CLS]" and encoded.tokens[-1] == "[SEP]" and "[UNK]" not in encoded.tokens
    assert max(encoded.ids) < config["vocab_size"]
    assert sum(f.stat().st_size for f in tiny_folder.rglob("*") if f.is_file()) < 1_000_000


# ------------------------------------------------------------------------ end to end, in the full venv

# Run by the full venv's python. Blocks sockets first: nothing may reach for the network.
E2E_SCRIPT = r"""
import json, os, socket, sys, threading
attempts = []
def refuse(self, address, *args):
    attempts.append(repr(address))
    raise OSError("network blocked by the test")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse

from pathlib import Path
from bfcl_ext.embeddings import (MEMORY_VECTOR_MODULE, embedding_identity, require_embedding_packages,
                                 resolve_embedding_model, use_embedding_model)
setting, other = (Path(a) if a else None for a in [*sys.argv[1:], "", ""][:2])
require_embedding_packages()
path = resolve_embedding_model(setting, os.environ)
errors = []
def call():
    try:
        use_embedding_model(path)
    except BaseException as error:
        errors.append(repr(error))
threads = [threading.Thread(target=call) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
use_embedding_model(path)  # again, after: harmless

import importlib
mv = importlib.import_module(MEMORY_VECTOR_MODULE)
import sentence_transformers
store = mv.MemoryAPI_vector()
texts = ["The user prefers green tea.", "Flight to Paris on Monday.", "The dog is called Rex."]
for text in texts:
    store.archival_memory_add(text)
hits = store.archival_memory_retrieve(texts[1], top_k=3)["result"]
vectors = mv.ENCODER.encode(texts, normalize_embeddings=False)

from transformers import BertModel
_, info = BertModel.from_pretrained(str(path), output_loading_info=True)

refused = None
if other is not None:  # another folder, after bfcl's module made its ENCODER: refused
    try:
        use_embedding_model(other)
    except RuntimeError as error:
        refused = str(error)
try:  # any other hub name still goes to sentence-transformers as asked (offline: not found)
    sentence_transformers.SentenceTransformer("sentence-transformers/all-mpnet-base-v2", local_files_only=True)
    unredirected = "loaded"
except Exception as error:
    unredirected = type(error).__name__
print(json.dumps({
    "path": str(path),
    "errors": errors,
    "encoder_class_is_patch": type(mv.ENCODER) is sentence_transformers.SentenceTransformer,
    "encoder_source": str(mv.ENCODER.bfcl_ext_source),
    "encoder_dim": int(mv.ENCODER_DIM),
    "norms": [float((v ** 2).sum() ** 0.5) for v in vectors],
    "distinct": bool(abs(vectors[0] - vectors[1]).max() > 1e-6),
    "top_hit": hits[0]["text"],
    "top_score": float(hits[0]["similarity_score"]),
    "hits": len(hits),
    "loading_info": {k: sorted(map(str, v)) for k, v in info.items()},
    "identity": embedding_identity(path),
    "refused": refused,
    "unredirected": unredirected,
    "attempts": attempts,
}))
"""


@pytest.fixture(scope="module")
def full_python() -> Path:
    return full_venv_python()


def run_in_full_venv(python: Path, tmp_path: Path, env: dict[str, str], *args: str) -> dict[str, Any]:
    script = tmp_path / "e2e.py"
    script.write_text(E2E_SCRIPT)
    base = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([str(python), str(script), *args], cwd=tmp_path, env={**base, **env},
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_memory_vector_ran_on(result: dict[str, Any], path: Path) -> None:
    assert result["path"] == str(path) and result["encoder_source"] == str(path)
    assert result["errors"] == [] and result["attempts"] == []
    assert result["encoder_class_is_patch"] is True
    assert result["encoder_dim"] == tiny_embedding.HIDDEN_SIZE
    assert all(abs(n - 1.0) < 1e-4 for n in result["norms"]), "the Normalize module was not loaded"
    assert result["distinct"] is True
    assert result["hits"] == 3
    assert result["top_hit"] == "Flight to Paris on Monday." and result["top_score"] > 0.999
    assert result["loading_info"].get("missing_keys") == [], "tiny weights do not match BertModel's keys"
    assert result["loading_info"].get("unexpected_keys") == []
    assert result["unredirected"] != "loaded"


@pytest.mark.timeout(1500)
def test_memory_vector_loads_the_cached_model_offline(full_python: Path, tmp_path: Path) -> None:
    hf_home = tmp_path / "hf"
    snapshot = make_tiny_embedding_cache(hf_home / "hub")
    other = make_tiny_embedding_model(tmp_path / "other")
    result = run_in_full_venv(full_python, tmp_path, {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"},
                              "", str(other))
    assert_memory_vector_ran_on(result, snapshot)
    assert result["identity"]["repo_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert result["identity"]["revision"] == snapshot.name
    assert result["identity"]["sha256"] == embedding_identity(snapshot)["sha256"]
    assert result["refused"] and "was imported before use_embedding_model" in result["refused"]


@pytest.mark.timeout(1500)
def test_memory_vector_loads_the_setting_folder_without_hf_offline(full_python: Path, tmp_path: Path) -> None:
    """No HF_HUB_OFFLINE and an empty cache: only the redirect keeps it off the network (sockets
    are blocked and every attempt recorded)."""
    folder = make_tiny_embedding_model(tmp_path / "model")
    empty_home = tmp_path / "empty-hf"
    empty_home.mkdir()
    result = run_in_full_venv(full_python, tmp_path, {"HF_HOME": str(empty_home)}, str(folder))
    assert_memory_vector_ran_on(result, folder)
    assert result["identity"]["repo_id"] is None
    assert result["identity"]["sha256"] == embedding_identity(folder)["sha256"]
    assert list(empty_home.iterdir()) == [], "nothing was written to the Hugging Face cache"
