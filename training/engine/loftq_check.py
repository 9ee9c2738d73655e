"""loftq_config's check, before training: how far the 4-bit model's logits are from the full-precision model's, with
standard LoRA init (zero B: the quantized base as it is) and with LoftQ-initialised adapters, on a small calibration
set. loftq_config, Symptoms: LoftQ is worth its init time when it "reduces the quantization error" of the start.

`python -m training.engine loftq-check SPEC.json` prints events: started, then finished with one result per init
({"init": "standard" | "loftq(4,1)", "logits_mse", "cosine", "seconds"}), or failed. SPEC: model, calibration_file
(JSONL rows with text, prompt or messages), samples (1..64, default 16), max_length (8..1024, default 256), r,
lora_alpha, target_modules (a group or names, resolved on the model), loftq ([[bits, iters], ...], default
[[4, 1], [4, 4]]).

4-bit weights need bitsandbytes on a CUDA GPU: without one the check fails at once and says so (the Django side
refuses it before queueing where it can tell).
"""
from __future__ import annotations

import json
import time
import traceback
from typing import Any

from . import targets
from .events import EventSink

NEEDS_GPU = ("the LoftQ check compares the 4-bit quantized model (bitsandbytes NF4, which needs a CUDA GPU) with the "
             "full-precision one; this machine has no CUDA GPU: run it on a GPU worker's queue")


def calibration_texts(path: str, samples: int, tokenizer) -> list[str]:
    texts = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            row = json.loads(line)
            if "messages" in row and tokenizer.chat_template:
                texts.append(tokenizer.apply_chat_template(row["messages"], tokenize=False))
            else:
                texts.append(row.get("text") or (row.get("prompt", "") + row.get("completion", "")))
            if len(texts) >= samples:
                break
    return [t for t in texts if t]


def _logits(model, batch) -> Any:
    import torch

    with torch.no_grad():
        return model(**batch).logits.float()


def compare(reference, logits, mask) -> dict[str, float]:
    """MSE of the logits and the mean cosine of each token's logit vector, over the real (unpadded) tokens."""
    import torch

    keep = mask.bool()
    ref, got = reference[keep], logits[keep]
    return {"logits_mse": float(torch.mean((ref - got) ** 2)),
            "cosine": float(torch.nn.functional.cosine_similarity(ref, got, dim=-1).mean())}


def check(spec: dict[str, Any], sink: EventSink) -> int:
    try:
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError(NEEDS_GPU)
        from peft import LoftQConfig, LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

        model_path = spec["model"]
        samples = int(spec.get("samples", 16))
        max_length = int(spec.get("max_length", 256))
        inits = [tuple(pair) for pair in spec.get("loftq", [[4, 1], [4, 4]])]
        lora = {"r": int(spec.get("r", 16)), "lora_alpha": int(spec.get("lora_alpha", 16)),
                "task_type": "CAUSAL_LM"}
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        texts = calibration_texts(spec["calibration_file"], samples, tokenizer)
        if not texts:
            raise ValueError("calibration_file: no rows with text")
        device = torch.device("cuda")
        batch = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length).to(device)
        sink.emit("started", model=model_path, samples=len(texts), tokens=int(batch["attention_mask"].sum()),
                  inits=["standard", *[f"loftq({b},{i})" for b, i in inits]], device=torch.cuda.get_device_name())
        dtype = torch.bfloat16
        full = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, device_map={"": 0})
        reference = _logits(full, batch)
        del full
        torch.cuda.empty_cache()
        results = []
        began = time.perf_counter()
        quantized = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, device_map={"": 0},
                                                         quantization_config=BitsAndBytesConfig(
                                                             load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                             bnb_4bit_use_double_quant=True,
                                                             bnb_4bit_compute_dtype=dtype))
        # A group ("all-linear", "attention", "mlp") or names, resolved on this model's own linear layers
        lora["target_modules"] = list(targets.resolve(targets.layout_of(quantized),
                                                      spec.get("target_modules") or "all-linear").target_modules)
        standard = get_peft_model(quantized, LoraConfig(**lora))
        results.append({"init": "standard", **compare(reference, _logits(standard, batch), batch["attention_mask"]),
                        "seconds": round(time.perf_counter() - began, 3)})
        del standard, quantized
        torch.cuda.empty_cache()
        for bits, iters in inits:
            began = time.perf_counter()
            # PEFT's LoftQ path as the engine trains it: the full-precision weights, quantized and dequantized in
            # place, and the adapters set to the leading singular vectors of what quantization lost.
            base = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, device_map={"": 0})
            model = get_peft_model(base, LoraConfig(**lora, init_lora_weights="loftq",
                                                    loftq_config=LoftQConfig(loftq_bits=bits, loftq_iter=iters)))
            seconds = time.perf_counter() - began
            results.append({"init": f"loftq({bits},{iters})",
                            **compare(reference, _logits(model, batch), batch["attention_mask"]),
                            "seconds": round(seconds, 3)})
            del model, base
            torch.cuda.empty_cache()
        sink.emit("finished", step=0, results=results, adapter_path=None)
        return 0
    except Exception as exc:  # noqa: BLE001 - every outcome is an event
        sink.emit("failed", step=0, error_class=type(exc).__name__, message=str(exc), traceback=traceback.format_exc(),
                  oom=False)
        return 1
