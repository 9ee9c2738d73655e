"""Playground time to first token once loaded: the engine's serve process (training/engine/serve.py) with a random
adapter on the model, N prompts sent one after another on its stdin; from each prompt's write to its first token
event on stdout (both sides in one batched generate), beside the engine's own ttft_s (its generate call alone).

    .venv/bin/python bench/playground.py                  # the tiny model on this CPU
    python3 bench/playground.py --size 1b --prompts 20    # the lent GPU: a random 1B Llama (target <= 1 s)

The model is built on the machine (training.engine.tiny), the adapter is a random LoRA (r 16, q/k/v/o) saved with
peft; prompts are the synthetic colour questions, sampled at temperature 0.7, top-p 0.95, 32 new tokens.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def random_adapter(model: Path, out: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model)
    config = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                        init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny", help="training.engine.tiny size: tiny, 1b, 1.1b")
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()

    from bench import baseline
    from training.engine.tiny import build_tiny_model, synthetic_pairs

    print(baseline.line_here(), flush=True)

    work = Path(tempfile.mkdtemp(prefix="bench-playground-"))
    model = build_tiny_model(work / f"model-{args.size}", size=args.size)
    adapter = random_adapter(model, work / "adapter")
    spec = work / "spec.json"
    spec.write_text(json.dumps({"model": str(model), "left": str(adapter), "right": None, "idle_s": 600}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "training.engine", "serve", str(spec)], cwd=ROOT, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            bufsize=1)

    def next_event() -> dict:
        while True:
            line = proc.stdout.readline()
            if not line:
                raise SystemExit("the serve process ended early")
            if line.startswith("{"):
                return json.loads(line)

    ready = next_event()
    while ready["type"] != "ready":
        if ready["type"] == "failed":
            raise SystemExit(f"load failed: {ready.get('message')}")
        ready = next_event()
    prompts = [prompt for prompt, _ in synthetic_pairs(args.prompts + 1, seed=3)]
    wall, engine, per_token = [], [], []
    for index, prompt in enumerate(prompts):
        sent = time.perf_counter()
        proc.stdin.write(json.dumps({"id": str(index), "prompt": prompt, "temperature": 0.7, "top_p": 0.95,
                                     "max_new_tokens": args.max_new_tokens, "seed": index}) + "\n")
        proc.stdin.flush()
        first, replies = None, []
        while len(replies) < 2:
            event = next_event()
            if event["type"] == "token" and first is None:
                first = time.perf_counter() - sent
            elif event["type"] == "reply":
                replies.append(event)
            elif event["type"] in ("refused", "failed"):
                raise SystemExit(f"prompt {index}: {event}")
        if index == 0:
            continue  # the first generate warms kernels and caches up
        wall.append(first if first is not None else float("nan"))
        engine.append(min(r["ttft_s"] for r in replies if r["ttft_s"] is not None))
        tokens = max(r["tokens"] for r in replies)
        if tokens > 1:
            per_token.append((replies[0]["seconds"] - engine[-1]) / (tokens - 1))
    proc.stdin.close()
    proc.wait(timeout=60)

    def p95(values):
        return sorted(values)[max(0, int(round(0.95 * len(values))) - 1)]

    print(f"playground time to first token, {args.size} model on {ready['device']} (loaded in {ready['load_s']} s), "
          f"adapter + base side in one batch, {len(wall)} prompts after one warm-up:")
    print(f"  prompt written -> first token event: median {statistics.median(wall) * 1000:.1f} ms, "
          f"p95 {p95(wall) * 1000:.1f} ms")
    print(f"  engine's generate -> first token:    median {statistics.median(engine) * 1000:.1f} ms")
    if per_token:
        print(f"  then {statistics.median(per_token) * 1000:.1f} ms per token (both sides)")
    print(baseline.line_here())


if __name__ == "__main__":
    main()
