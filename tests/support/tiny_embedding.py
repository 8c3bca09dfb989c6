"""Build a tiny random sentence-transformers model that stands in for all-MiniLM-L6-v2.

No model hub is reachable in CI, so the embedding model of bfcl-eval's memory_vector category is
made here, laid out as the real one is: a ``BertModel`` with random weights (hidden 32, 2 layers,
2 attention heads, intermediate 64), a WordPiece tokenizer whose vocab is made from text generated
below, mean pooling and normalization (modules.json, 1_Pooling/config.json, ...).

It needs no torch: the weights are written with numpy and safetensors, the tokenizer with
tokenizers, all in the default (torch-free) venv, so that the tests of model discovery run there.
Loading it (sentence-transformers, torch) is for the full venv (``scripts/install.sh --full``).

A random model's embeddings mean nothing: use it to test discovery, offline loading and the
plumbing of memory_vector, not the score.

Two layouts:

* a plain folder (what ``BFCL_EXT_EMBEDDING_MODEL``/``--embedding-model`` takes)::

    python -m tests.support.tiny_embedding TARGET_DIR

* a Hugging Face hub cache holding it as ``sentence-transformers/all-MiniLM-L6-v2``
  (``CACHE/models--sentence-transformers--all-MiniLM-L6-v2/{blobs,snapshots/<commit>,refs/main}``,
  snapshot files linked to blobs, as huggingface_hub writes them): point ``HF_HUB_CACHE`` at
  ``CACHE``, or ``HF_HOME`` at its parent when ``CACHE`` is ``$HF_HOME/hub``::

    python -m tests.support.tiny_embedding --hf-cache CACHE

Both are deterministic (fixed seed, same bytes every time; the commit name is a hash of the
files), need no network, and do nothing when already built.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["HUB_REPO_ID", "HIDDEN_SIZE", "make_tiny_embedding_cache", "make_tiny_embedding_model", "model_files"]

SEED = 0
HUB_REPO_ID = "sentence-transformers/all-MiniLM-L6-v2"
HIDDEN_SIZE = 32
INTERMEDIATE_SIZE = 64
NUM_LAYERS = 2
NUM_HEADS = 2
MAX_POSITIONS = 128
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0-4, as BERT's vocab starts

_WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from or "
    "one had by word but not what all were we when your can said there use an each which she do "
    "how their if will up other about out many then them these so some her would make like him "
    "into time has look two more write go see number no way could people my than first water been "
    "user name prefers likes lives works birthday favorite color food city pet dog cat friend "
    "meeting project deadline note remember memory core archival entry key value search query "
    "store update delete list add remove replace weather temperature flight hotel book order "
    "price account balance email phone address music movie travel sport coffee tea monday friday"
).split()


def _corpus(rng: random.Random) -> list[str]:
    """A few thousand words of English-ish sentences, numbers and punctuation, made locally."""
    texts = []
    for _ in range(600):
        n = rng.randint(4, 16)
        sentence = " ".join(rng.choice(_WORDS) for _ in range(n))
        texts.append(sentence.capitalize() + rng.choice([".", "?", "!", ","]))
        texts.append(f"{rng.choice(_WORDS)}_{rng.choice(_WORDS)} = {rng.randint(0, 99999)}")
    texts.append("0123456789 ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz {}[]()<>:;,.'\"-_/@#$%&*+=?!")
    return texts


def _vocab() -> list[str]:
    """BERT's WordPiece vocab layout, from the corpus: the special tokens, every character alone
    and as a ``##`` continuation, then every lower-cased word. Built directly rather than by
    tokenizers' WordPieceTrainer, whose ties fall in hash order: the same bytes every time."""
    words: set[str] = set()
    chars: set[str] = set()
    for text in _corpus(random.Random(SEED)):
        for word in re.findall(r"[a-z]+|[0-9]+|[^\sa-z0-9]", text.lower()):
            chars.update(word)
            if len(word) > 1 and word.isalpha():
                words.add(word)
    ordered_chars = sorted(chars)
    return [*SPECIAL_TOKENS, *ordered_chars, *(f"##{c}" for c in ordered_chars), *sorted(words)]


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab = {token: i for i, token in enumerate(_vocab())}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.add_special_tokens(SPECIAL_TOKENS)
    return tok


def _weights(vocab_size: int) -> dict:
    """A BertModel's state dict (the key names of transformers' BertModel), as numpy arrays."""
    import numpy as np

    rng = np.random.default_rng(SEED)
    h, i = HIDDEN_SIZE, INTERMEDIATE_SIZE

    def normal(*shape: int):
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    def linear(prefix: str, out_features: int, in_features: int) -> dict:
        return {f"{prefix}.weight": normal(out_features, in_features),
                f"{prefix}.bias": np.zeros(out_features, np.float32)}

    def layer_norm(prefix: str) -> dict:
        return {f"{prefix}.weight": np.ones(h, np.float32), f"{prefix}.bias": np.zeros(h, np.float32)}

    word = normal(vocab_size, h)
    word[0] = 0.0  # [PAD], BERT's padding_idx
    tensors = {
        "embeddings.word_embeddings.weight": word,
        "embeddings.position_embeddings.weight": normal(MAX_POSITIONS, h),
        "embeddings.token_type_embeddings.weight": normal(2, h),
        **layer_norm("embeddings.LayerNorm"),
    }
    for n in range(NUM_LAYERS):
        p = f"encoder.layer.{n}"
        for name in ("query", "key", "value"):
            tensors.update(linear(f"{p}.attention.self.{name}", h, h))
        tensors.update(linear(f"{p}.attention.output.dense", h, h))
        tensors.update(layer_norm(f"{p}.attention.output.LayerNorm"))
        tensors.update(linear(f"{p}.intermediate.dense", i, h))
        tensors.update(linear(f"{p}.output.dense", h, i))
        tensors.update(layer_norm(f"{p}.output.LayerNorm"))
    tensors.update(linear("pooler.dense", h, h))
    return tensors


def _dump(obj: object) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def model_files() -> dict[str, bytes]:
    """Every file of the model, by relative path (``/``-separated), built in memory."""
    from safetensors.numpy import save

    tok = _tokenizer()
    vocab = tok.get_vocab(with_added_tokens=True)
    vocab_size = len(vocab)
    files: dict[str, bytes] = {}
    files["tokenizer.json"] = (tok.to_str(pretty=True) + "\n").encode()
    files["vocab.txt"] = "".join(f"{t}\n" for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])).encode()
    special = {"cls_token": "[CLS]", "mask_token": "[MASK]", "pad_token": "[PAD]", "sep_token": "[SEP]",
               "unk_token": "[UNK]"}
    files["special_tokens_map.json"] = _dump(special).encode()
    files["tokenizer_config.json"] = _dump({
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": True,
        "tokenize_chinese_chars": True,
        "strip_accents": None,
        "model_max_length": MAX_POSITIONS,
        "clean_up_tokenization_spaces": False,
        **special,
    }).encode()
    files["config.json"] = _dump({
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": vocab_size,
        "hidden_size": HIDDEN_SIZE,
        "num_hidden_layers": NUM_LAYERS,
        "num_attention_heads": NUM_HEADS,
        "intermediate_size": INTERMEDIATE_SIZE,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": MAX_POSITIONS,
        "type_vocab_size": 2,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
    }).encode()
    files["model.safetensors"] = save(_weights(vocab_size), metadata={"format": "pt"})
    # sentence-transformers' own files, as in all-MiniLM-L6-v2 (module type names included).
    files["modules.json"] = _dump([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]).encode()
    files["sentence_bert_config.json"] = _dump({"max_seq_length": MAX_POSITIONS, "do_lower_case": False}).encode()
    files["config_sentence_transformers.json"] = _dump({
        "__version__": {"sentence_transformers": "2.0.0", "transformers": "4.6.1", "pytorch": "1.8.1"},
    }).encode()
    files["1_Pooling/config.json"] = _dump({
        "word_embedding_dimension": HIDDEN_SIZE,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }).encode()
    files["README.md"] = b"# tiny random stand-in for sentence-transformers/all-MiniLM-L6-v2 (tests only)\n"
    return files


def _files_digest(files: dict[str, bytes]) -> str:
    digest = hashlib.sha1()
    for rel in sorted(files):
        digest.update(rel.encode() + b"\0" + hashlib.sha256(files[rel]).digest())
    return digest.hexdigest()


def _usual_modes(root: Path) -> None:
    # mkdtemp makes a 0700 folder: give the usual modes, so another user (a container) can read it.
    umask = os.umask(0)
    os.umask(umask)
    for p in [root, *root.rglob("*")]:
        if not p.is_symlink():
            p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)


def _write_folder(out: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    (out / "2_Normalize").mkdir(exist_ok=True)  # as SentenceTransformer.save() leaves it: empty


def _publish(tmp: Path, target: Path, done: str) -> Path:
    """Move the finished ``tmp`` to ``target``, ``done`` (a relative path) last."""
    if (target / done).exists():  # built concurrently by someone else
        return target
    if not target.exists():
        try:
            tmp.rename(target)
            return target
        except OSError:
            if (target / done).exists():
                return target
    for src in sorted(tmp.rglob("*"), key=lambda p: (p.relative_to(tmp).as_posix() == done, -len(p.parts))):
        rel = src.relative_to(tmp)
        dst = target / rel
        if src.is_dir() and not src.is_symlink():
            dst.mkdir(parents=True, exist_ok=True)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
    return target


def make_tiny_embedding_model(target_dir: Path) -> Path:
    """Build the model as a plain folder ``target_dir`` (created if missing); return its path.

    Does nothing if ``target_dir/modules.json`` exists. Written in a temporary folder beside it and
    moved in, modules.json last, so an interrupted build is never taken for a finished one.
    """
    target_dir = Path(target_dir).resolve()
    if (target_dir / "modules.json").is_file():
        return target_dir
    target_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target_dir.name}.", dir=target_dir.parent))
    try:
        _write_folder(tmp, model_files())
        _usual_modes(tmp)
        return _publish(tmp, target_dir, "modules.json")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def make_tiny_embedding_cache(cache_dir: Path) -> Path:
    """Put the model in the hub cache ``cache_dir`` as sentence-transformers/all-MiniLM-L6-v2 and
    return its snapshot folder (``cache_dir/models--.../snapshots/<commit>``).

    The layout is huggingface_hub's: each file's bytes in ``blobs/<sha256>``, the snapshot's files
    relative links to them, ``refs/main`` naming the commit. Does nothing if refs/main exists;
    refs/main is written last.
    """
    cache_dir = Path(cache_dir).resolve()
    repo = cache_dir / ("models--" + HUB_REPO_ID.replace("/", "--"))
    ref = repo / "refs" / "main"
    if ref.is_file():
        return repo / "snapshots" / ref.read_text().strip()
    files = model_files()
    commit = _files_digest(files)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{repo.name}.", dir=cache_dir))
    try:
        snapshot = tmp / "snapshots" / commit
        for rel, data in files.items():
            blob = tmp / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            link = snapshot / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
        (tmp / "refs").mkdir()
        (tmp / "refs" / "main").write_text(commit)  # huggingface_hub writes no newline
        _usual_modes(tmp)
        _publish(tmp, repo, "refs/main")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return repo / "snapshots" / commit


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    hf_cache = bool(argv) and argv[0] == "--hf-cache"
    if hf_cache:
        argv = argv[1:]
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        usage = "usage: python -m tests.support.tiny_embedding [--hf-cache] TARGET_DIR"
        print(f"{usage}\n\n{__doc__}", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    path = make_tiny_embedding_cache(Path(argv[0])) if hf_cache else make_tiny_embedding_model(Path(argv[0]))
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    print(f"tiny embedding model in {path} ({size / 1e6:.2f} MB, {time.monotonic() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
