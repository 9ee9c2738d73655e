"""Real chat templates and tokenizers of the model families, for the families tests: taken from llama.cpp's own copies
shipped in PyPI's llama-cpp-python sdist (vendor/llama.cpp/models/templates/*.jinja are the models' templates,
ggml-vocab-*.gguf their vocabularies), never from a model hub.

`make install` runs it once: it downloads the sdist with pip, extracts the templates and the vocabularies, and converts
each vocabulary to a fast tokenizer (transformers' GGUF reader; minutes for a 32k SentencePiece vocabulary, hence once
at install, not per test) under DEST/tokenizers/<vocab>/.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "0.3.36"
VOCABS = ("llama-bpe", "qwen2", "gemma-4", "phi-3")
MODELS = "vendor/llama.cpp/models/"


def extract(sdist: Path, dest: Path) -> None:
    (dest / "templates").mkdir(parents=True, exist_ok=True)
    (dest / "vocab").mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            rel = member.name.split(MODELS, 1)[-1] if MODELS in member.name else None
            if not rel or not member.isfile():
                continue
            if rel.startswith("templates/") and rel.endswith(".jinja"):
                target = dest / "templates" / Path(rel).name
            elif rel.startswith("ggml-vocab-") and rel.endswith(".gguf") and rel[len("ggml-vocab-"):-5] in VOCABS:
                target = dest / "vocab" / rel
            else:
                continue
            target.write_bytes(tar.extractfile(member).read())


def convert(dest: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    for vocab in VOCABS:
        out = dest / "tokenizers" / vocab
        if (out / "tokenizer.json").is_file():
            continue
        # the tokenizer class, not AutoTokenizer: that one also builds the model's config from the file, which
        # fails for Gemma 4's per-layer head counts
        tokenizer = PreTrainedTokenizerFast.from_pretrained(dest / "vocab", gguf_file=f"ggml-vocab-{vocab}.gguf")
        tokenizer.save_pretrained(out)
        print(f"{vocab}: {len(tokenizer)} tokens -> {out}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("dest", help="e.g. .venv/share/llama-cpp-python")
    args = parser.parse_args()
    dest = Path(args.dest)
    if not (dest / "templates").is_dir():
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                            f"llama-cpp-python=={VERSION}", "-d", tmp], check=True)
            extract(next(Path(tmp).glob("llama_cpp_python-*.tar.gz")), dest)
    convert(dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
