"""memory_vector's embedding model: found locally, loaded offline, recorded in the manifest.

bfcl-eval's ``memory_vector`` backend does, when its module is imported::

    from sentence_transformers import SentenceTransformer
    import faiss
    ENCODER = SentenceTransformer("all-MiniLM-L6-v2", device="cpu")

which would download ``sentence-transformers/all-MiniLM-L6-v2`` from the Hugging Face hub. bfcl-ext
never downloads: :func:`resolve_embedding_model` finds the model's folder (the
``BFCL_EXT_EMBEDDING_MODEL``/``--embedding-model`` setting, else the snapshot in the local Hugging
Face cache), and :func:`use_embedding_model` makes that ``SentenceTransformer(...)`` call load
that folder, before the bridge imports bfcl's module.

This module never imports ``bfcl_eval``; sentence-transformers and torch are imported only by
:func:`use_embedding_model` (they are absent from the default, torch-free install).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bfcl_ext.errors import ConfigError
from bfcl_ext.provenance import sha256_file

__all__ = [
    "BFCL_MODEL_NAME",
    "EMBEDDING_SETTING",
    "HUB_REPO_ID",
    "MEMORY_VECTOR_MODULE",
    "embedding_identity",
    "hf_hub_cache_dirs",
    "require_embedding_packages",
    "resolve_embedding_model",
    "use_embedding_model",
]

EMBEDDING_SETTING = "BFCL_EXT_EMBEDDING_MODEL/--embedding-model"
CATEGORY_SETTING = "BFCL_EXT_TEST_CATEGORY/--test-category"  # as bfcl_ext.bridge names it
BFCL_MODEL_NAME = "all-MiniLM-L6-v2"  # what bfcl-eval asks SentenceTransformer for
HUB_REPO_ID = f"sentence-transformers/{BFCL_MODEL_NAME}"  # what sentence-transformers expands it to
MEMORY_VECTOR_MODULE = "bfcl_eval.eval_checker.multi_turn_eval.func_source_code.memory_vector"
REQUIRED_PACKAGES = ("torch", "sentence_transformers", "faiss")
INSTALL_HINT = (
    "install them with `scripts/install.sh --full` (requirements/full.lock: CPU torch and "
    "sentence-transformers), or build the runner image with --build-arg WITH_MEMORY_VECTOR=1"
)
MODEL_MARKERS = ("modules.json", "config.json")  # a folder sentence-transformers can load has one
WEIGHT_SUFFIXES = (".safetensors", ".bin")
# Files hashed into embedding_identity: what the torch backend reads (configs, tokenizer, weights).
IDENTITY_SUFFIXES = (".json", ".safetensors", ".bin", ".txt", ".model")
IDENTITY_SKIPPED_DIRS = ("onnx", "openvino")  # other backends' copies of the weights, never loaded here


# ------------------------------------------------------------------------------------- finding


def hf_hub_cache_dirs(env: Mapping[str, str]) -> list[Path]:
    """The cache folders a hub-layout model may be in, most specific first, read from ``env``
    (Settings.environment: huggingface_hub reads it once at import, a later change would be missed).

    HF_HUB_CACHE, else HUGGINGFACE_HUB_CACHE, else $HF_HOME/hub, else
    ${XDG_CACHE_HOME:-~/.cache}/huggingface/hub, as huggingface_hub resolves it; then
    SENTENCE_TRANSFORMERS_HOME when set (sentence-transformers uses it as its cache_folder).
    """

    def expand(value: str) -> Path:
        return Path(os.path.expandvars(os.path.expanduser(value)))

    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    hub = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    dirs = [expand(hub)]
    if env.get("SENTENCE_TRANSFORMERS_HOME"):
        dirs.append(expand(env["SENTENCE_TRANSFORMERS_HOME"]))
    return list(dict.fromkeys(dirs))


def _model_folder_problem(folder: Path) -> str | None:
    """Why ``folder`` is not a model sentence-transformers can load, or None."""
    if not folder.exists():
        return "does not exist"
    if not folder.is_dir():
        return "is not a folder"
    if not any((folder / marker).is_file() for marker in MODEL_MARKERS):
        return f"is not a sentence-transformers model folder (no {' or '.join(MODEL_MARKERS)} in it)"
    # is_file() follows links: a hub snapshot whose blobs are gone has dangling links.
    if not any(p.suffix in WEIGHT_SUFFIXES and p.is_file() for p in folder.rglob("*")):
        return f"has no weights (no *{' or *'.join(WEIGHT_SUFFIXES)} file in it)"
    return _damaged_weights(folder)


def _damaged_weights(folder: Path) -> str | None:
    """A safetensors file whose header does not parse (cut short, overwritten): found now, before any
    request, instead of when bfcl-eval loads the model. Read with safetensors' NumPy side: no torch."""
    try:
        from safetensors import safe_open
    except ImportError:
        return None  # checked again when the model loads
    for path in sorted(p for p in folder.rglob("*.safetensors") if p.is_file()):
        try:
            with safe_open(str(path), framework="np") as weights:
                weights.keys()
        except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
            return f"has damaged weights ({path.name}: {str(error).splitlines()[0][:120]})"
    return None


def _cached_snapshot(cache_dir: Path) -> Path | None:
    """The snapshot of HUB_REPO_ID in a hub-layout cache, or None.

    As huggingface_hub resolves revision "main" offline (refs/main holds the commit, the files
    are under snapshots/<commit>), but without ``snapshot_download(local_files_only=True)``: its
    check against a cached listing of the whole repository rejects a snapshot that holds only
    what sentence-transformers downloads (no onnx/, openvino/...), which loads fine. When refs/main
    is missing, a single snapshot is unambiguous and taken.
    """
    repo = cache_dir / ("models--" + HUB_REPO_ID.replace("/", "--"))
    snapshots = repo / "snapshots"
    try:
        commit = (repo / "refs" / "main").read_text().strip()
    except OSError:
        commit = ""
    if commit:
        candidate = snapshots / commit
        return candidate if candidate.is_dir() else None
    try:
        found = [p for p in snapshots.iterdir() if p.is_dir()]
    except OSError:
        return None
    return found[0] if len(found) == 1 else None


def resolve_embedding_model(setting: Path | None, env: Mapping[str, str]) -> Path:
    """The folder of memory_vector's embedding model, found without any network access.

    ``setting`` (BFCL_EXT_EMBEDDING_MODEL/--embedding-model) when given: it must be a folder that
    sentence-transformers can load (modules.json or config.json, and weights). Otherwise the
    snapshot of sentence-transformers/all-MiniLM-L6-v2 in the local Hugging Face cache that ``env``
    names (:func:`hf_hub_cache_dirs`). Raises :class:`ConfigError` (exit 2) with a one-line reason.
    """
    if setting is not None:
        folder = Path(setting).expanduser()
        problem = _model_folder_problem(folder)
        if problem:
            raise ConfigError(
                EMBEDDING_SETTING, str(setting),
                f"{problem}; give the local folder of a sentence-transformers model (e.g. a copy of "
                f"{HUB_REPO_ID}), or unset it to use the local Hugging Face cache",
            )
        return folder.resolve()

    looked: list[str] = []
    for cache_dir in hf_hub_cache_dirs(env):
        snapshot = _cached_snapshot(cache_dir)
        if snapshot is None:
            looked.append(f"{cache_dir} (not there)")
            continue
        problem = _model_folder_problem(snapshot)
        if problem is None:
            return snapshot.absolute()  # not resolve(): keep the snapshot path, not the blob links
        looked.append(f"{snapshot} ({problem})")
    raise ConfigError(
        EMBEDDING_SETTING, "",
        f"memory_vector needs the embedding model {HUB_REPO_ID} and bfcl-ext never downloads it: "
        f"none usable in the local Hugging Face cache (looked in {'; '.join(looked)}); either put it in "
        f"the cache (HF_HOME or HF_HUB_CACHE, e.g. `hf download {HUB_REPO_ID}` on a machine online) or "
        f"set {EMBEDDING_SETTING} to a local copy of it",
    )


# ------------------------------------------------------------------------------------- packages


def require_embedding_packages() -> None:
    """Raise :class:`ConfigError` (exit 2) unless torch, sentence-transformers and faiss are
    installed in this interpreter. Looks them up without importing them (importing torch takes
    seconds); :func:`use_embedding_model` imports them and reports a broken install the same way.
    """
    missing = [name for name in REQUIRED_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            CATEGORY_SETTING, "memory_vector",
            f"needs {', '.join(REQUIRED_PACKAGES)}; {', '.join(missing)} not installed in {sys.prefix}: "
            f"{INSTALL_HINT}",
        )


# ------------------------------------------------------------------------------------- loading

_lock = threading.Lock()
_target: Path | None = None  # the folder bfcl's SentenceTransformer("all-MiniLM-L6-v2") loads
_RedirectingSentenceTransformer: Any = None  # made once, from sentence-transformers' class


def _make_redirecting_class(base: type) -> type:
    """A subclass of sentence-transformers' class that loads :data:`_target` instead of the hub
    model bfcl-eval names, with ``local_files_only=True``; every other name loads as usual."""

    class SentenceTransformer(base):  # type: ignore[misc, valid-type]
        __doc__ = base.__doc__

        def __init__(self, model_name_or_path: Any = None, *args: Any, **kwargs: Any) -> None:
            target = _target
            redirected = target is not None and str(model_name_or_path) in (BFCL_MODEL_NAME, HUB_REPO_ID)
            if redirected:
                model_name_or_path = str(target)
                kwargs["local_files_only"] = True
            super().__init__(model_name_or_path, *args, **kwargs)
            self.bfcl_ext_source = target if redirected else None

    # Reachable by pickle under the module-level name it is stored as.
    SentenceTransformer.__module__ = __name__
    SentenceTransformer.__qualname__ = "_RedirectingSentenceTransformer"
    return SentenceTransformer


def use_embedding_model(path: Path) -> None:
    """Make bfcl-eval's ``SentenceTransformer("all-MiniLM-L6-v2", device="cpu")`` load ``path``,
    offline, when the bridge later imports bfcl's memory_vector module. Call it before that import
    (once per run; calling it again is harmless, from any thread).

    How: ``sentence_transformers.SentenceTransformer`` is replaced by a subclass that maps that one
    model name (and its hub id) to ``path`` with ``local_files_only=True`` and leaves every other
    call alone. bfcl-eval binds the name with ``from sentence_transformers import
    SentenceTransformer`` when its module is imported, so it gets the subclass. Why not something
    else: bfcl-eval has no setting for the model; pointing HF_HOME at a prepared cache only works
    for a model already in hub layout and changes every other hub lookup of the process;
    HF_HUB_OFFLINE is read by huggingface_hub once, at import, so setting it here may come too
    late; and ``"all-MiniLM-L6-v2"`` is first tried as a folder relative to the working directory,
    which the runner must not depend on. Only the package's top-level name is replaced:
    sentence-transformers' own modules keep the original class.

    Raises :class:`ConfigError` when ``path`` is not a loadable folder or the packages are missing
    or broken, and RuntimeError when bfcl's memory_vector module was already imported with another
    model (its ENCODER is made once, at import).
    """
    global _RedirectingSentenceTransformer, _target
    folder = Path(path).expanduser()
    problem = _model_folder_problem(folder)
    if problem:
        raise ConfigError(EMBEDDING_SETTING, str(path), problem)
    folder = folder.absolute()
    require_embedding_packages()
    with _lock:
        try:
            # sentence_transformers imports torch first; faiss comes after it, as bfcl-eval does
            # (the other order can crash: the two bring different OpenMP runtimes).
            import sentence_transformers
        except Exception as error:  # an ImportError, or a broken torch raising anything
            raise ConfigError(
                CATEGORY_SETTING, "memory_vector",
                f"importing sentence-transformers failed ({type(error).__name__}: {error}); {INSTALL_HINT}",
            ) from None
        loaded = sys.modules.get(MEMORY_VECTOR_MODULE)
        if loaded is not None:
            source = getattr(getattr(loaded, "ENCODER", None), "bfcl_ext_source", None)
            if source != folder:
                raise RuntimeError(
                    f"{MEMORY_VECTOR_MODULE} was imported before use_embedding_model({str(folder)!r}): "
                    f"its ENCODER was loaded from {source or 'somewhere else'}"
                )
        current = sentence_transformers.SentenceTransformer
        if _RedirectingSentenceTransformer is None:
            _RedirectingSentenceTransformer = _make_redirecting_class(current)
        elif current is not _RedirectingSentenceTransformer:
            raise RuntimeError(
                "sentence_transformers.SentenceTransformer was replaced by someone else after "
                "use_embedding_model patched it"
            )
        _target = folder
        sentence_transformers.SentenceTransformer = _RedirectingSentenceTransformer


# ------------------------------------------------------------------------------------- identity


def _identity_files(folder: Path) -> list[Path]:
    files = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder)
        if rel.parts[0] in IDENTITY_SKIPPED_DIRS or any(part.startswith(".") for part in rel.parts):
            continue
        if p.suffix in IDENTITY_SUFFIXES and p.is_file():
            files.append(p)
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def embedding_identity(path: Path) -> dict[str, Any]:
    """What the manifest records of the embedding model: ``name`` (the model bfcl-eval asks for),
    ``path`` (the folder loaded), ``repo_id`` and ``revision`` when the folder is a hub-cache
    snapshot (else None), ``files`` (relative path -> sha256 of every config, tokenizer and weight
    file: *.json, *.safetensors, *.bin, *.txt, *.model, outside onnx/ and openvino/), and
    ``sha256``: one digest over those, in path order, as lines ``<sha256>  <relative path>``
    (the sha256sum format), so two folders with the same files have the same digest wherever
    they are.
    """
    folder = Path(path).absolute()
    files = {p.relative_to(folder).as_posix(): sha256_file(p) for p in _identity_files(folder)}
    listing = "".join(f"{digest}  {rel}\n" for rel, digest in files.items())
    repo_id = revision = None
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        repo_id = folder.parent.parent.name[len("models--"):].replace("--", "/")
        revision = folder.name
    return {
        "name": BFCL_MODEL_NAME,
        "path": str(folder),
        "repo_id": repo_id,
        "revision": revision,
        "sha256": hashlib.sha256(listing.encode()).hexdigest(),
        "files": files,
    }
