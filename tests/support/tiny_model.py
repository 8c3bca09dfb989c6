"""Build a tiny random Qwen2 chat model that a real vLLM server can load on the CPU.

No model hub is reachable in CI, so the model is made here: a ``Qwen2ForCausalLM`` with random
weights (hidden 128, 2 layers, 4 attention heads, 2 KV heads; head_dim 32, which the CPU attention
backend supports), a byte-level BPE tokenizer trained in about a second on text generated below,
and a Qwen/Hermes-style chat template that renders ``tools`` so that
``--enable-auto-tool-choice --tool-call-parser hermes`` accepts requests with tools.

A random model never produces a meaningful answer or a valid tool call: use it to test the
protocol, the lifecycle and the plumbing, not the score.

Run it inside the vLLM venv (it needs torch, transformers, tokenizers, safetensors)::

    python -m tests.support.tiny_model TARGET_DIR
    python tests/support/tiny_model.py TARGET_DIR

It is deterministic (fixed seeds), needs no network, and does nothing when
``TARGET_DIR/config.json`` already exists.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["CHAT_TEMPLATE", "SPECIAL_TOKENS", "make_tiny_model"]

SEED = 0
HIDDEN_SIZE = 128
INTERMEDIATE_SIZE = 256
NUM_LAYERS = 2
NUM_HEADS = 4
NUM_KV_HEADS = 2
MAX_POSITIONS = 2048
BPE_VOCAB_SIZE = 1024  # the trainer's target; the real size is written to config.json

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
# Qwen2.5 keeps these as added tokens (not "special": they must survive detokenization so that
# the hermes tool parser can see them).
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]
ADDED_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]

# Qwen2's pre-tokenizer regex (the one in Qwen2.5's tokenizer.json).
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Qwen2.5-Instruct's template (Hermes tool format), made robust to ``content: null`` and to
# tool-call arguments that arrive either as a JSON string (OpenAI wire format) or as a dict.
CHAT_TEMPLATE = r"""{%- macro content_text(c) -%}
    {%- if c is none -%}
    {%- elif c is string -%}{{- c -}}
    {%- else -%}{%- for part in c -%}{%- if part.type == 'text' -%}{{- part.text -}}{%- endif -%}{%- endfor -%}
    {%- endif -%}
{%- endmacro -%}
{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages and messages[0]['role'] == 'system' %}
        {{- content_text(messages[0]['content']) }}
    {%- else %}
        {{- 'You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages and messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + content_text(messages[0]['content']) + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + content_text(message.content) + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + content_text(message.content) }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {%- if tool_call.arguments is string %}
                {{- tool_call.arguments }}
            {%- else %}
                {{- tool_call.arguments | tojson }}
            {%- endif %}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- content_text(message.content) }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

_WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from or "
    "one had by word but not what all were we when your can said there use an each which she do "
    "how their if will up other about out many then them these so some her would make like him "
    "into time has look two more write go see number no way could people my than first water been "
    "call who oil its now find long down day did get come made may part weather city temperature "
    "celsius fahrenheit location unit date name value result function arguments tool call response "
    "search query user assistant system message content price order account balance transfer "
    "email address phone book flight hotel restaurant movie music play pause stop start file "
    "directory list create delete update read open close true false null error status ok"
).split()

_PYTHON_SNIPPETS = [
    (
        "def get_weather(location: str, unit: str = 'celsius') -> dict:\n"
        "    return {'location': location, 'temperature': 21, 'unit': unit}\n"
    ),
    "import json\n\nwith open(path) as f:\n    data = json.load(f)\nprint(data['name'])\n",
    (
        "class Account:\n    def __init__(self, owner, balance=0.0):\n        self.owner = owner\n"
        "        self.balance = balance\n\n    def deposit(self, amount):\n"
        "        self.balance += amount\n"
    ),
    "for i in range(10):\n    if i % 2 == 0:\n        continue\n    total += i * 3.5\n",
    "result = [x ** 2 for x in values if x > 0]\nassert len(result) <= len(values)\n",
    (
        "try:\n    response = client.chat.completions.create(model=model, messages=messages)\n"
        "except Exception as exc:\n    raise RuntimeError(str(exc)) from exc\n"
    ),
]


def _corpus(rng: random.Random) -> list[str]:
    """A few dozen KB of English-ish text, JSON, tool calls and Python, all made locally."""
    texts: list[str] = []
    for _ in range(400):
        n = rng.randint(5, 20)
        sentence = " ".join(rng.choice(_WORDS) for _ in range(n))
        texts.append(sentence.capitalize() + rng.choice([".", "?", "!", ","]))
    for _ in range(150):
        obj = {
            rng.choice(_WORDS): rng.choice(
                [rng.randint(-1000, 100000), round(rng.uniform(-50, 50), 2), rng.choice(_WORDS),
                 True, False, None, [rng.randint(0, 9) for _ in range(3)]]
            )
            for _ in range(rng.randint(1, 5))
        }
        texts.append(json.dumps(obj))
        call = {"name": f"{rng.choice(_WORDS)}_{rng.choice(_WORDS)}", "arguments": obj}
        texts.append(f"<tool_call>\n{json.dumps(call)}\n</tool_call>")
        texts.append(f"<tool_response>\n{json.dumps(obj)}\n</tool_response>")
    for _ in range(20):
        texts.extend(_PYTHON_SNIPPETS)
    texts.append("0123456789 ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz {}[]()<>:;,.'\"")
    return texts


def _train_tokenizer():
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(random.Random(SEED)), trainer=trainer)
    tok.add_tokens(ADDED_TOKENS)
    return tok


def _tokenizer_config(tok) -> dict:
    added = {}
    for content in SPECIAL_TOKENS + ADDED_TOKENS:
        added[str(tok.token_to_id(content))] = {
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": content in SPECIAL_TOKENS,
        }
    return {
        # The generic fast tokenizer loads tokenizer.json exactly as written.
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "additional_special_tokens": [IM_START, IM_END],
        "bos_token": None,
        "eos_token": IM_END,
        "pad_token": ENDOFTEXT,
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "model_max_length": MAX_POSITIONS,
        "split_special_tokens": False,
        "chat_template": CHAT_TEMPLATE,
    }


def _build(out: Path) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = _train_tokenizer()
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps(_tokenizer_config(tok), indent=2, ensure_ascii=False) + "\n"
    )
    (out / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "additional_special_tokens": [IM_START, IM_END],
                "eos_token": IM_END,
                "pad_token": ENDOFTEXT,
            },
            indent=2,
        )
        + "\n"
    )

    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    vocab_size = (vocab_size + 63) // 64 * 64  # padded, as real checkpoints do
    eot, im_end = tok.token_to_id(ENDOFTEXT), tok.token_to_id(IM_END)
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=HIDDEN_SIZE,
        intermediate_size=INTERMEDIATE_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_KV_HEADS,
        max_position_embeddings=MAX_POSITIONS,
        max_window_layers=NUM_LAYERS,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
        use_sliding_window=False,
        bos_token_id=eot,
        eos_token_id=im_end,
        pad_token_id=eot,
        torch_dtype="float32",
    )
    config.architectures = ["Qwen2ForCausalLM"]
    torch.manual_seed(SEED)
    model = Qwen2ForCausalLM(config).to(torch.float32).eval()
    model.save_pretrained(str(out))
    if not (out / "model.safetensors").is_file():
        raise RuntimeError(f"save_pretrained wrote no model.safetensors in {out}")

    # Written by hand (save_pretrained may or may not write one, depending on the version).
    # Token ids only: no sampling defaults, so that vLLM's own defaults and the request's
    # parameters apply (vLLM would otherwise take temperature, top_p... from this file).
    (out / "generation_config.json").write_text(
        json.dumps(
            {
                "bos_token_id": eot,
                "eos_token_id": [im_end, eot],
                "pad_token_id": eot,
            },
            indent=2,
        )
        + "\n"
    )


def make_tiny_model(target_dir: Path) -> Path:
    """Build the tiny model in ``target_dir`` (created if missing) and return that path.

    Does nothing if ``target_dir/config.json`` exists. The files are written in a temporary
    folder beside it and moved in, config.json last, so that an interrupted build is never taken
    for a finished one.
    """
    target_dir = Path(target_dir).resolve()
    if (target_dir / "config.json").is_file():
        return target_dir
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    target_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target_dir.name}.", dir=target_dir.parent))
    try:
        _build(tmp)
        # mkdtemp makes a 0700 folder and some writers make 0600 files: give them the usual
        # modes, so that a server running as another user (e.g. in a container) can read them.
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)
        for f in tmp.iterdir():
            f.chmod(0o666 & ~umask)
        if (target_dir / "config.json").is_file():  # built concurrently by someone else
            return target_dir
        if not target_dir.exists():
            try:
                tmp.rename(target_dir)
                return target_dir
            except OSError:
                if (target_dir / "config.json").is_file():
                    return target_dir
        target_dir.mkdir(parents=True, exist_ok=True)
        files = sorted(tmp.iterdir(), key=lambda p: p.name == "config.json")
        for f in files:
            os.replace(f, target_dir / f.name)
        return target_dir
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        usage = "usage: python -m tests.support.tiny_model TARGET_DIR"
        print(f"{usage}\n\n{__doc__}", file=sys.stderr)
        return 2
    target = Path(argv[0])
    existed = (target / "config.json").is_file()
    t0 = time.monotonic()
    path = make_tiny_model(target)
    if existed:
        print(f"tiny model already in {path}")
    else:
        size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
        print(f"tiny model built in {path} in {time.monotonic() - t0:.1f} s ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
