"""Real chat templates and tokenizers of the model families, for the families tests: taken from llama.cpp's own copies
shipped in PyPI's llama-cpp-python sdist (vendor/llama.cpp/models/templates/*.jinja are the models' templates,
ggml-vocab-*.gguf their vocabularies), never from a model hub. From the same sdist, llama.cpp's own converters for
the GGUF export (training/engine/gguf_export.py): convert_hf_to_gguf.py, convert_lora_to_gguf.py, the `conversion`
package they import and their gguf-py, under DEST/llama.cpp/ with llama.cpp's LICENSE.

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
LLAMA_CPP = "vendor/llama.cpp/"
# What the converters need of the llama.cpp tree: the scripts, their package and their own gguf library.
CONVERTER_FILES = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "LICENSE")
CONVERTER_FOLDERS = ("conversion/", "gguf-py/gguf/")


def extract(sdist: Path, dest: Path) -> None:
    (dest / "templates").mkdir(parents=True, exist_ok=True)
    (dest / "vocab").mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            tree = member.name.split(LLAMA_CPP, 1)[-1] if LLAMA_CPP in member.name else None
            if tree in CONVERTER_FILES or (tree and tree.startswith(CONVERTER_FOLDERS) and tree.endswith(".py")):
                target = dest / "llama.cpp" / tree
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
                continue
            rel = member.name.split(MODELS, 1)[-1] if MODELS in member.name else None
            if not rel:
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
    if not (dest / "templates").is_dir() or not (dest / "llama.cpp" / "convert_lora_to_gguf.py").is_file():
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                            f"llama-cpp-python=={VERSION}", "-d", tmp], check=True)
            extract(next(Path(tmp).glob("llama_cpp_python-*.tar.gz")), dest)
    convert(dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
