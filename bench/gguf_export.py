"""The GGUF export's time on this machine: a random Llama with Llama 3's vocabulary and a random LoRA adapter (r 16 on
every linear layer), exported as a worker's child does it (`python -m training.engine gguf`: merge, llama.cpp's
convert_hf_to_gguf.py and llama_model_quantize, convert_lora_to_gguf.py, the Modelfiles), each stage timed from
its progress events. Prints the machine baseline (bench/baseline.py) first.

    PYTHONPATH=. .venv/bin/python bench/gguf_export.py                 # "small": 4 layers, width 512 (~140M)
    PYTHONPATH=. .venv/bin/python bench/gguf_export.py --size tiny     # the tests' model
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", choices=["tiny", "small"], default="small")
    parser.add_argument("--quant", action="append", help="default: q8_0 and q4_k_m")
    args = parser.parse_args()

    from bench import baseline
    from tests.families import save_llama3_tokenizer
    from training.engine.tiny import build_tiny_arch

    print(baseline.line_here(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_tiny_arch(root / "model", "llama", size=args.size,
                                tokenizer_from=save_llama3_tokenizer(root / "tokenizer"))
        adapter = _random_adapter(model, root / "adapter")
        spec = {"model": str(model), "adapter": str(adapter), "out_dir": str(root / "out"), "name": "bench",
                "llama_cpp_dir": str(Path(sys.prefix) / "share" / "llama-cpp-python" / "llama.cpp"),
                "quantizations": args.quant or ["q8_0", "q4_k_m"]}
        (root / "spec.json").write_text(json.dumps(spec))
        started = time.monotonic()
        process = subprocess.Popen([sys.executable, "-m", "training.engine", "gguf", str(root / "spec.json")],
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        last, stages = started, []
        for line in process.stdout:
            event = json.loads(line)
            now = time.monotonic()
            if event["type"] == "export-stage":
                if stages:
                    stages[-1][1] = now - last
                stages.append([event["message"], 0.0])
                last = now
            elif event["type"] == "export-file":
                print(f"  {event['name']}: {event['size'] / 1e6:.1f} MB", flush=True)
            elif event["type"] in ("finished", "failed"):
                if stages:
                    stages[-1][1] = now - last
                if event["type"] == "failed":
                    print(f"failed: {event['message']}")
                    return 1
        process.wait()
        total = time.monotonic() - started
        params = sum(p.numel() for p in _load(model).parameters())
        print(f"model: {args.size}, {params / 1e6:.0f}M parameters; export {total:.1f} s in all "
              f"(process start and imports included)")
        for message, seconds in stages:
            print(f"  {seconds:6.1f} s  {message}")
    return 0


def _load(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder)


def _random_adapter(model: Path, folder: Path) -> Path:
    """A LoRA adapter whose B matrices are not zero (a trained one's are not), saved with the tokenizer as a run's."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    peft_model = get_peft_model(_load(model), LoraConfig(r=16, lora_alpha=16, target_modules="all-linear",
                                                         init_lora_weights=False))
    peft_model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(model).save_pretrained(folder)
    return folder


if __name__ == "__main__":
    sys.exit(main())
