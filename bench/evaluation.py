"""Eval suite throughput: examples/s of `python -m training.engine evaluate` over a suite of N prompts, per batch size,
with the process's wall time (model load included) beside the engine's own generation rate; and, with --loftq, the
LoftQ check's figures on the same model (GPU only).

    .venv/bin/python bench/evaluation.py                          # the tiny model on this CPU, 1,000 prompts
    python3 bench/evaluation.py --size 1b --batch-sizes 1,16,64   # the lent GPU: a random 1B Llama, batched
    python3 bench/evaluation.py --size 1b --loftq                 # and the LoftQ check

The model is built on the machine (training.engine.tiny: random weights, a locally trained tokenizer); prompts are
the synthetic colour questions, answers up to --max-new-tokens (greedy). On a machine with PostgreSQL and Redis the
machine baseline (bench/baseline.py) is printed first; elsewhere its CPU loop alone.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def engine(command: str, spec: dict, work: Path) -> tuple[float, list[dict]]:
    path = work / f"{command}-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(spec))
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "training.engine", command, str(path)], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                                          "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                                                      os.environ.get("PYTHONPATH")]))})
    wall = time.perf_counter() - started
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if not events or events[-1]["type"] != "finished":
        print(proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"{command} failed: {events[-1] if events else 'no events'}")
    return wall, events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny", help="training.engine.tiny size: tiny, 1b, 1.1b")
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--loftq", action="store_true", help="also run the LoftQ check (needs a CUDA GPU)")
    args = parser.parse_args()

    from bench import baseline
    from training.engine.tiny import build_tiny_model, synthetic_pairs

    print(baseline.line_here(), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        work = Path(tmp)
        built = time.perf_counter()
        model = str(build_tiny_model(work / "model", size=args.size))
        print(f"model: random {args.size} Llama built in {time.perf_counter() - built:.1f} s", flush=True)
        prompts = work / "prompts.jsonl"
        pairs = synthetic_pairs(args.examples)
        prompts.write_text("".join(json.dumps({"index": i, "messages": [{"role": "user", "content": q}]}) + "\n"
                                   for i, (q, _) in enumerate(pairs)))
        print(f"{'batch':>5} {'examples/s':>11} {'new tokens/s':>13} {'wall s':>7} {'load s':>7}", flush=True)
        for batch in [int(b) for b in args.batch_sizes.split(",") if b]:
            wall, events = engine("evaluate", {"model": model, "adapter": None, "examples_file": str(prompts),
                                               "max_new_tokens": args.max_new_tokens, "batch_size": batch}, work)
            started, finished = events[0], events[-1]
            tokens_s = finished["new_tokens"] / finished["runtime_s"] if finished["runtime_s"] else 0
            print(f"{batch:>5} {finished['examples_per_s']:>11.1f} {tokens_s:>13.0f} {wall:>7.1f} "
                  f"{started['load_s']:>7.1f}   ({finished['examples']} examples on {started['device']})", flush=True)
        if args.loftq:
            calibration = work / "calibration.jsonl"
            calibration.write_text("".join(json.dumps({"text": f"{q} {a}"}) + "\n" for q, a in pairs[:16]))
            wall, events = engine("loftq-check", {"model": model, "calibration_file": str(calibration), "samples": 16,
                                                  "max_length": 128, "r": 16, "lora_alpha": 16}, work)
            print(f"loftq check ({wall:.1f} s, {events[0]['samples']} samples, {events[0]['tokens']} tokens, "
                  f"{events[0]['device']}):", flush=True)
            for result in events[-1]["results"]:
                print(f"  {result['init']:<12} logits MSE {result['logits_mse']:.6f}  cosine {result['cosine']:.6f}  "
                      f"init {result['seconds']:.1f} s", flush=True)
    print(baseline.line_here(), flush=True)


if __name__ == "__main__":
    main()
