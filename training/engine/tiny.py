"""Small random-initialised causal LMs with a locally trained tokenizer, for tests, the demo and GPU benches.

Nothing here touches a model hub: the tokenizer is trained on generated text and the model is saved with
save_pretrained, to be loaded back through the same from_pretrained path as a real model.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"]

COLOURS = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple"]
THINGS = ["apple", "leaf", "sky", "sun", "coal", "snow", "carrot", "plum", "grass", "cherry", "cloud", "lemon"]

# Sizes: "tiny" trains in seconds on a CPU; "1b" matches Llama-3.2-1B's shapes and "1.1b" TinyLlama-1.1B's (22 layers,
# MLP 5632, 4 KV heads, vocabulary 32,000, untied) for GPU throughput benches: two common "1B Llamas". "0.1b" (134M
# parameters, GPT-2-small widths) and "0.5b" (468M, 24 layers) are smaller Llamas with TinyLlama's vocabulary and no
# grouped KV heads, for the fit planner's calibration grid (bench/fit_grid.py): shapes that differ in more than size.
SIZES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=1024),
    "0.1b": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                 num_key_value_heads=12, max_position_embeddings=4096, vocab_size=32000, tie_word_embeddings=False),
    "0.5b": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                 num_key_value_heads=16, max_position_embeddings=4096, vocab_size=32000, tie_word_embeddings=False),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, max_position_embeddings=8192, vocab_size=128256, tie_word_embeddings=True),
    "1.1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                 num_key_value_heads=4, max_position_embeddings=2048, vocab_size=32000, tie_word_embeddings=False),
}


def synthetic_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Prompt/answer pairs with a rule a tiny model can learn: each thing has one colour."""
    rng = random.Random(seed)
    colour_of = {thing: COLOURS[i % len(COLOURS)] for i, thing in enumerate(THINGS)}
    pairs = []
    for _ in range(n):
        thing = rng.choice(THINGS)
        count = rng.randint(1, 5)
        pairs.append((f"What colour is the {thing}? Say it {count} times.",
                      " ".join([colour_of[thing]] * count) + "."))
    return pairs


def write_dataset(path: str | Path, n: int = 64, fmt: str = "messages", seed: int = 0) -> Path:
    """A learnable JSONL dataset in one of TRL's formats: text, prompt_completion or messages."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for prompt, answer in synthetic_pairs(n, seed):
            if fmt == "text":
                row = {"text": f"Q: {prompt} A: {answer}"}
            elif fmt == "prompt_completion":
                row = {"prompt": f"Q: {prompt} A:", "completion": f" {answer}"}
            elif fmt == "messages":
                row = {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}
            else:
                raise ValueError(f"fmt must be text, prompt_completion or messages, not {fmt!r}")
            fh.write(json.dumps(row) + "\n")
    return path


def _train_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [f"Q: {p} A: {a}" for p, a in synthetic_pairs(2000, seed=1)]
    corpus += ["user assistant system The quick brown fox jumps over the lazy dog. 0123456789 ,.;:!?'\"()[]{}"]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|im_end|>", pad_token="<|pad|>",
        chat_template=CHAT_TEMPLATE, model_max_length=131072,
    )


def build_tiny_model(out_dir: str | Path, arch: str = "llama", size: str = "tiny", seed: int = 0) -> Path:
    """Build, save and return the directory of a random causal LM ("llama", or "qwen2" with q/k/v biases)."""
    import torch
    from transformers import LlamaConfig, Qwen2Config

    if arch not in ("llama", "qwen2"):
        raise ValueError(f"arch must be llama or qwen2, not {arch!r}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, not {size!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(vocab_size=512)
    dims = dict(SIZES[size])
    vocab = max(dims.pop("vocab_size", 0), len(tokenizer))
    common = dict(
        vocab_size=vocab, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, rope_theta=10000.0, **{"tie_word_embeddings": False, **dims},
    )
    config = LlamaConfig(**common) if arch == "llama" else Qwen2Config(**common)
    return _save_random(config, tokenizer, out, dtype=torch.float32 if size == "tiny" else torch.bfloat16, seed=seed)


def _save_random(config, tokenizer, out: Path, *, dtype, seed: int) -> Path:
    """A model of `config` with weights drawn from `seed`, saved in `out` with its tokenizer; generation pads and
    stops with the tokenizer's own pad and end tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# The architectures build_tiny_arch makes, by transformers' model_type (Gemma 3 as its text-only Gemma3ForCausalLM).
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "mistral": "mistral", "gemma2": "gemma2",
                 "gemma3": "gemma3_text", "phi3": "phi3"}
# One set of widths for every architecture, so that their parameter counts compare: head_dim is given because
# Gemma's and Qwen3's configs default to their real models' (256, 128) rather than hidden / heads.
ARCH_WIDTHS = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, max_position_embeddings=1024),
    "small": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=4, head_dim=64, max_position_embeddings=4096, vocab_size=32000),
}


def build_tiny_arch(out_dir: str | Path, arch: str, *, tokenizer_from: str | Path | None = None, size: str = "tiny",
                    seed: int = 0) -> Path:
    """Build, save and return the directory of a random causal LM of one of ARCHITECTURES at ARCH_WIDTHS[size], with
    the project's tiny tokenizer, or the tokenizer saved in `tokenizer_from` (a model folder)."""
    import torch
    from transformers import AutoConfig, AutoTokenizer

    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {', '.join(ARCHITECTURES)}, not {arch!r}")
    if size not in ARCH_WIDTHS:
        raise ValueError(f"size must be one of {', '.join(ARCH_WIDTHS)}, not {size!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from) if tokenizer_from else _train_tokenizer(vocab_size=512)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dims = dict(ARCH_WIDTHS[size])
    vocab = max(dims.pop("vocab_size", 0), len(tokenizer))
    config = AutoConfig.for_model(
        ARCHITECTURES[arch], vocab_size=vocab, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, **dims)
    return _save_random(config, tokenizer, out, dtype=torch.float32 if size == "tiny" else torch.bfloat16, seed=seed)
