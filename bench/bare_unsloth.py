"""A bare Unsloth SFT script (no Tuneboard code) for the engine/bare throughput ratio: same config, same data.

Usage: python bench/bare_unsloth.py CONFIG.json  -> prints one JSON line {"times": [...], "tokens": [...], ...}
"""
import json
import os
import sys
import time

import unsloth_varlen  # bench/, beside this script

unsloth_varlen.apply()  # a +varlen case only: before Unsloth is imported
import unsloth  # noqa: E402,F401  (before transformers/TRL, as Unsloth asks)
import torch
from datasets import load_dataset
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer
from unsloth import FastLanguageModel

cfg = json.load(open(sys.argv[1]))
if cfg.get("tiled_mlp"):  # Unsloth's own switch, read by from_pretrained: "arctic" or "target:GB"
    os.environ["UNSLOTH_TILED_MLP"] = (f"target:{cfg['tiled_mlp_target_gb']}" if cfg.get("tiled_mlp_target_gb")
                                       else "arctic")
model, tokenizer = FastLanguageModel.from_pretrained(
    model_name=cfg["model"], max_seq_length=cfg["max_length"], dtype=None, load_in_4bit=cfg["load_in_4bit"])
model = FastLanguageModel.get_peft_model(
    model, r=cfg["r"], lora_alpha=cfg["lora_alpha"], lora_dropout=0, bias="none",
    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    use_gradient_checkpointing=cfg.get("use_gradient_checkpointing",
                                       "unsloth" if cfg.get("gradient_checkpointing", True) else False),
    random_state=cfg["random_state"], max_seq_length=cfg["max_length"])
dataset = load_dataset("json", data_files=cfg["train_file"], split="train")


class Clock(TrainerCallback):
    def __init__(self):
        self.times, self.tokens = [], []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.times.append(time.time())
            self.tokens.append(state.num_input_tokens_seen)


clock = Clock()
trainer = SFTTrainer(
    model=model, processing_class=tokenizer, train_dataset=dataset, callbacks=[clock],
    args=SFTConfig(
        output_dir="/tmp/bare-out", max_length=cfg["max_length"], packing=cfg["packing"],
        per_device_train_batch_size=cfg["per_device_train_batch_size"],
        gradient_accumulation_steps=cfg["gradient_accumulation_steps"], warmup_steps=cfg["warmup_steps"],
        learning_rate=cfg["learning_rate"], optim=cfg["optim"], weight_decay=cfg["weight_decay"],
        lr_scheduler_type=cfg["lr_scheduler_type"], max_steps=cfg["max_steps"], logging_steps=1,
        bf16=True, save_strategy="no", report_to="none", seed=cfg["seed"], dataset_num_proc=1,
        include_num_input_tokens_seen="non_padding", disable_tqdm=True),
)
trainer.train()
print(json.dumps({"times": clock.times, "tokens": clock.tokens,
                  "peak_vram_bytes": torch.cuda.max_memory_allocated(),
                  "peak_reserved_bytes": torch.cuda.max_memory_reserved(), "device": torch.cuda.get_device_name(0)}))
