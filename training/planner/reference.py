"""The measured figures in docs/benchmarks.md that the planner's defaults are fitted on, where a team has no run
of its own on a GPU yet. Each row: the section it comes from, the config's fields that matter, the figures."""
from __future__ import annotations

import functools
import json
from pathlib import Path

from training.planner.shapes import ModelShape, shape_from_config

GiB = 1024 ** 3
# `bench/gpu_throughput.py --size 1.1b`: a random Llama with TinyLlama-1.1B's shapes.
TINYLLAMA_1_1B = ModelShape(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_layers=22, num_heads=32,
                            num_kv_heads=4, head_dim=64, tie_word_embeddings=False)
# The bench's COMMON settings: r 16 on all 7 projections, adamw_8bit, bf16, checkpointing, accumulation 1.
COMMON = {"r": 16, "lora_alpha": 16, "target_modules": "all-linear", "optim": "adamw_8bit", "dtype": "bfloat16",
          "gradient_checkpointing": True, "gradient_accumulation_steps": 1}
H100 = "NVIDIA H100 80GB HBM3"
H200 = "NVIDIA H200"
LONG_ROWS_MEAN = 995.0  # the bench's `long` data at seq 1024: 65% of rows cut at 1,024, the rest 860–1,023 tokens


def _row(section, gpu, backend, peak_gib, tokens_per_s, mean_tokens=None, **config):
    return {"section": section, "gpu": gpu, "backend": backend, "shape": TINYLLAMA_1_1B,
            "config": {**COMMON, **config}, "peak_bytes": peak_gib * GiB if peak_gib else None,
            "tokens_per_s": tokens_per_s, "mean_tokens": mean_tokens}


FASTEST_FIT_CALL = "Fastest fit, lent H200 2026-12-03 (bench/gpu_throughput.py --size 1.1b, interleaved)"
PACKED_2048 = dict(packing=True, max_length=2048, per_device_train_batch_size=8, load_in_4bit=False)
QLORA_1024 = dict(packing=False, max_length=1024, load_in_4bit=True)
ROWS = [
    _row("2026-11-25 (third session): Unsloth's one-call varlen attention", H100, "unsloth", 3.41, 47_950,
         **PACKED_2048),
    _row("2026-11-25 (third session): Unsloth's one-call varlen attention, tiled_mlp_target_gb 0.5", H100, "unsloth",
         3.29, None, tiled_mlp=True, tiled_mlp_target_gb=0.5, **PACKED_2048),
    _row("GPU throughput summary: plain stack, 16-bit packed seq 2048", H100, "hf", 6.68, 7_300, **PACKED_2048),
    _row("2026-11-25 (second session): QLoRA on TinyLlama shapes, micro-batch 8", H100, "unsloth", 1.51, None,
         mean_tokens=LONG_ROWS_MEAN, per_device_train_batch_size=8, **QLORA_1024),
    _row("GPU throughput summary: QLoRA micro-batch 16, mixed-length rows, varlen", H100, "unsloth", 2.13, 46_700,
         mean_tokens=LONG_ROWS_MEAN, per_device_train_batch_size=16, **QLORA_1024),
    _row("2026-11-25 (second session): QLoRA, engine hf backend, micro-batch 8", H100, "hf", 2.44, 16_652,
         mean_tokens=LONG_ROWS_MEAN, per_device_train_batch_size=8, **QLORA_1024),
    _row("2026-11-25 (second session): QLoRA, engine hf backend, micro-batch 16", H100, "hf", 4.01, 26_842,
         mean_tokens=LONG_ROWS_MEAN, per_device_train_batch_size=16, **QLORA_1024),
    _row("Issue 21's headline ratios, lent H200 2026-12-01 (bench/gpu_throughput.py --size 1.1b)", H200, "unsloth",
         None, 52_600, **PACKED_2048),
    _row("Issue 21's headline ratios, lent H200 2026-12-01 (bench/gpu_throughput.py --size 1.1b)", H200, "hf",
         None, 8_250, **PACKED_2048),
    # The fastest-fit call, lent H200 2026-12-03 (docs/gpu-2026-12-03/fastest.json): each the mean of two
    # interleaved readings of 30 steps, the first 10 left out.
    _row(FASTEST_FIT_CALL, H200, "unsloth", 3.41, 54_551, **PACKED_2048),
    _row(FASTEST_FIT_CALL, H200, "unsloth", 18.85, 69_849, **{**PACKED_2048, "gradient_checkpointing": False}),
    _row(FASTEST_FIT_CALL, H200, "unsloth", 18.92, 77_542, **{**PACKED_2048, "gradient_checkpointing": False,
                                                             "optim": "adamw_torch_fused"}),
]


# bench/fit_grid.py's lines from the lent H200 (docs/benchmarks.md, "Fit planner"): random Llamas of 0.1B-1.1B.
GRID_FILES = sorted((Path(__file__).parent / "data").glob("fit_grid_*.jsonl"))


def grid_rows(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if r.get("error") and not r.get("oom"):
            continue
        rows.append({"section": f"{path.name}: {r['name']}", "gpu": r["gpu"], "backend": r["backend_used"],
                     "shape": shape_from_config(r["model_config"]), "config": r["config"],
                     "peak_bytes": None if r.get("oom") else r.get("peak_vram_bytes"),
                     "tokens_per_s": None if r.get("oom") else r.get("tokens_per_s"),
                     "mean_tokens": None if r["config"].get("packing") else (r.get("started") or {}).get("mean_tokens"),
                     "oom": bool(r.get("oom")), "gpu_total_bytes": r.get("gpu_total_memory_bytes")})
    return rows


@functools.cache
def rows() -> tuple[dict, ...]:
    """ROWS and the grid's rows. The grid's shapes are built on the meta device (transformers, torch), so on the
    first plan and not at import: a web server or worker that plans nothing starts without importing torch."""
    return (*ROWS, *(row for path in GRID_FILES for row in grid_rows(path)))
