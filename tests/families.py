"""Tokenizers of real model families for the families tests: each one's own chat template and the closest real
vocabulary, both from llama.cpp's copies that `make install` takes from PyPI's llama-cpp-python sdist
(scripts/family_assets.py), never from a model hub.

Where llama.cpp ships the family's own vocabulary it is used (Llama 3.x, Qwen 2.5/3, Gemma 4, Phi-3.5). Where it does
not, the real template is paired with the closest real vocabulary and the template's control tokens are added as
special tokens, as the family's own tokenizer has them:
- Gemma 2 (256k SentencePiece): Gemma 4's 262k vocabulary, plus <start_of_turn>/<end_of_turn>;
- Mistral Nemo (tekken, a tiktoken BPE): Llama 3's tiktoken BPE, plus <s>, </s>, [INST], [/INST];
- SmolLM3 (Llama 3's vocabulary with ChatML turns): Llama 3's, plus <|im_start|>/<|im_end|>;
- DeepSeek-R1-Distill-Llama (Llama 3's vocabulary, DeepSeek's control tokens): Llama 3's, plus its <｜...｜> tokens;
- Qwen3 (Qwen 2.5's vocabulary plus <think>/</think>): Qwen 2.5's, plus those two.
"""
from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ASSETS = Path(sys.prefix) / "share" / "llama-cpp-python"


@dataclass(frozen=True)
class Family:
    name: str
    template: str
    vocab: str
    bos: str | None
    eos: str  # the end-of-turn token the template writes after an answer
    added: tuple[str, ...] = ()
    plain_added: tuple[str, ...] = ()  # added as ordinary tokens (Qwen3's <think> is not special)


FAMILIES = {f.name: f for f in [
    Family("llama-3.1", "meta-llama-Llama-3.1-8B-Instruct", "llama-bpe", "<|begin_of_text|>", "<|eot_id|>"),
    Family("llama-3.2", "meta-llama-Llama-3.2-3B-Instruct", "llama-bpe", "<|begin_of_text|>", "<|eot_id|>"),
    Family("qwen-2.5", "Qwen-Qwen2.5-7B-Instruct", "qwen2", None, "<|im_end|>"),
    Family("qwen3", "Qwen-Qwen3-0.6B", "qwen2", None, "<|im_end|>", plain_added=("<think>", "</think>")),
    Family("gemma-2", "google-gemma-2-2b-it", "gemma-4", "<bos>", "<end_of_turn>",
           added=("<start_of_turn>", "<end_of_turn>")),
    Family("gemma-4", "google-gemma-4-31B-it", "gemma-4", "<bos>", "<turn|>"),
    Family("mistral-nemo", "mistralai-Mistral-Nemo-Instruct-2407", "llama-bpe", "<s>", "</s>",
           added=("<s>", "</s>", "[INST]", "[/INST]")),
    Family("phi-3.5", "microsoft-Phi-3.5-mini-instruct", "phi-3", "<s>", "<|end|>"),
    Family("smollm3", "HuggingFaceTB-SmolLM3-3B", "llama-bpe", None, "<|im_end|>",
           added=("<|im_start|>", "<|im_end|>")),
    Family("r1-distill-llama", "deepseek-ai-DeepSeek-R1-Distill-Llama-8B", "llama-bpe", "<｜begin▁of▁sentence｜>",
           "<｜end▁of▁sentence｜>", added=("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>",
                                           "<｜Assistant｜>")),
]}


def assets_or_skip(vocab: str) -> Path:
    if not (ASSETS / "tokenizers" / vocab / "tokenizer.json").is_file():
        pytest.skip(f"{ASSETS} is missing: `make install` puts llama.cpp's templates and vocabularies there "
                    "(scripts/family_assets.py)")
    return ASSETS


@functools.lru_cache(maxsize=None)
def family_tokenizer(name: str):
    """The family's tokenizer, built once per session: its template set and its tokens added. Shared: do not
    change it in a test."""
    from tokenizers import decoders, pre_tokenizers
    from transformers import AutoTokenizer

    family = FAMILIES[name]
    assets_or_skip(family.vocab)
    tokenizer = AutoTokenizer.from_pretrained(ASSETS / "tokenizers" / family.vocab)
    backend = tokenizer.backend_tokenizer
    # transformers' GGUF converter chains SentencePiece's "▁" replacement and a byte-level decoder for every
    # vocabulary, which turns the "▁" of DeepSeek's control tokens into spaces (byte-level vocabularies) and drops
    # the spaces of a SentencePiece one (Phi-3); the families' own tokenizer.json files decode with one or the other
    if type(backend.pre_tokenizer).__name__ == "ByteLevel":
        backend.decoder = decoders.ByteLevel()
    elif backend.pre_tokenizer is None and backend.normalizer is None:
        # ... and for Phi-3's SentencePiece vocabulary it leaves out the "▁" for spaces altogether (spaces vanish);
        # Llama 2's and Phi-3's own tokenizer.json split with Metaspace
        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
        backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                             decoders.Strip(" ", 1, 0)])
    tokenizer.chat_template = (ASSETS / "templates" / f"{family.template}.jinja").read_text()
    if family.added:
        tokenizer.add_special_tokens({"additional_special_tokens": list(family.added)})
    if family.plain_added:
        tokenizer.add_tokens(list(family.plain_added))
    tokenizer.eos_token = family.eos
    if family.bos:
        tokenizer.bos_token = family.bos
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# Llama 3's own pre-tokenizer (its tokenizer.json): transformers' reader of a GGUF vocabulary writes GPT-2's instead,
# which llama.cpp's converter (it hashes a pre-tokenizer's output) does not know.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")


def save_llama3_tokenizer(folder: Path) -> Path:
    """Llama 3.2's tokenizer (its vocabulary and template) saved in `folder` as Meta's tokenizer.json has it, so a
    model built with it converts to GGUF as a real Llama 3 does (`pre` llama-bpe): the GGUF export's tests."""
    from tokenizers import Regex, pre_tokenizers
    from transformers import AutoTokenizer

    family_tokenizer("llama-3.2").save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)  # a copy: the shared one stays as it is
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tokenizer.save_pretrained(folder)
    return folder
