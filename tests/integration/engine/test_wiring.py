"""Every config field reaches the object it controls: SFTConfig, LoraConfig, the LoRA layers and the trainer.

These build the real objects in this process with the hf backend (never unsloth here: importing it would patch
TRL for the whole test process).
"""
import math

import pytest
import torch

from training.engine import backends, runner
from training.engine.config import parse_config
from training.engine.data import load_data
from training.engine.events import EventSink

from .conftest import base_config


def make(model, data_dir, tmp_path, **overrides):
    return parse_config(base_config(model, data_dir, tmp_path / "out", **overrides))


def build_trainer(config):
    train, evaluation, fmt = load_data(config)
    model, tokenizer = backends.load(config, "hf", torch.float32)
    args = runner.sft_config(config, fmt, torch.float32, evaluation is not None)
    trainer = runner._trainer_class("hf")(model=model, args=args, train_dataset=train, eval_dataset=evaluation,
                                          processing_class=tokenizer)
    return trainer, fmt


def test_sft_fields_reach_sftconfig(tiny_llama, data_dir, tmp_path):
    config = make(tiny_llama, data_dir, tmp_path, packing=True, eval_packing=False, per_device_train_batch_size=3,
                  gradient_accumulation_steps=5, warmup_steps=0.1, learning_rate=3e-4, weight_decay=0.02,
                  lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": 0.1},
                  max_grad_norm=0.5, num_train_epochs=2.0, max_steps=None, eval_split=0.1, eval_steps=7,
                  logging_steps=3, save_steps=11, seed=7, completion_only_loss=True, max_length=96)
    args = runner.sft_config(config, "messages", torch.float32, has_eval=True)
    assert (args.max_length, args.packing, args.eval_packing) == (96, True, False)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (3, 5)
    assert args.warmup_steps == 0.1 and args.learning_rate == 3e-4 and args.weight_decay == 0.02
    assert args.lr_scheduler_type.value == "cosine_with_min_lr" and args.lr_scheduler_kwargs == {"min_lr_rate": 0.1}
    assert args.max_grad_norm == 0.5 and args.num_train_epochs == 2.0 and args.max_steps == -1
    assert args.eval_strategy.value == "steps" and args.eval_steps == 7
    assert args.logging_steps == 3 and args.save_strategy.value == "steps" and args.save_steps == 11
    assert args.seed == 7 and args.optim.value == "adamw_torch"
    # chat rows reach TRL tokenized with their assistant_masks (training.engine.chat): TRL's own marker-bound
    # assistant_only_loss stays off
    assert args.assistant_only_loss is False
    assert args.bf16 is False and args.fp16 is False  # CPU


def test_prompt_completion_data_uses_completion_only_loss(tiny_llama, data_dir, tmp_path):
    config = make(tiny_llama, data_dir, tmp_path, completion_only_loss=False)
    assert runner.sft_config(config, "prompt_completion", torch.float32, False).completion_only_loss is False


def test_lora_fields_reach_loraconfig(tiny_llama, data_dir, tmp_path):
    config = make(tiny_llama, data_dir, tmp_path, r=8, lora_alpha=24, lora_dropout=0.05, bias="lora_only",
                  use_rslora=True, target_modules="attention", loftq_config={"loftq_bits": 4, "loftq_iter": 2})
    lora = backends.lora_config(config, ["q_proj", "k_proj", "v_proj", "o_proj"])
    assert (lora.r, lora.lora_alpha, lora.lora_dropout, lora.bias, lora.use_rslora) == (8, 24, 0.05, "lora_only", True)
    assert set(lora.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert lora.init_lora_weights == "loftq"
    assert (lora.loftq_config["loftq_bits"], lora.loftq_config["loftq_iter"]) == (4, 2)


@pytest.mark.parametrize("use_rslora, expected", [(False, 24 / 16), (True, 24 / 4)])
def test_rslora_scale_inside_a_lora_layer(tiny_llama, data_dir, tmp_path, use_rslora, expected):
    config = make(tiny_llama, data_dir, tmp_path, r=16, lora_alpha=24, use_rslora=use_rslora)
    model, _ = backends.load(config, "hf", torch.float32)
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert q_proj.scaling["default"] == pytest.approx(expected)
    assert backends.lora_scale_in_effect(model) == pytest.approx(expected)


def test_target_groups_choose_the_wrapped_modules(tiny_llama, data_dir, tmp_path):
    model, _ = backends.load(make(tiny_llama, data_dir, tmp_path, target_modules="mlp"), "hf", torch.float32)
    wrapped = {name.split(".")[-1] for name, m in model.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == {"gate_proj", "up_proj", "down_proj"}


def test_bias_trainables_on_the_biased_model(tiny_qwen, data_dir, tmp_path):
    counts = {}
    for bias in ("none", "lora_only", "all"):
        model, _ = backends.load(make(tiny_qwen, data_dir, tmp_path, bias=bias), "hf", torch.float32)
        counts[bias] = backends.parameter_counts(model)
    assert counts["none"]["trainable_bias_params"] == 0
    # Qwen2 has biases on q, k and v: 2 layers x (64 + 32 + 32)
    assert counts["lora_only"]["trainable_bias_params"] == 2 * (64 + 32 + 32)
    assert counts["lora_only"]["trainable_params"] > counts["none"]["trainable_params"]
    assert counts["all"]["trainable_bias_params"] >= counts["lora_only"]["trainable_bias_params"]


def test_bias_on_an_unbiased_model_warns_and_changes_nothing(tiny_llama, data_dir, tmp_path):
    events = []
    sink = EventSink(open("/dev/null", "w"), callback=events.append)
    config = make(tiny_llama, data_dir, tmp_path, bias="all")
    model, _ = backends.load(config, "hf", torch.float32)
    counts = backends.parameter_counts(model)
    none_model, _ = backends.load(make(tiny_llama, data_dir, tmp_path), "hf", torch.float32)
    assert counts["trainable_params"] == backends.parameter_counts(none_model)["trainable_params"]
    runner._setting_warnings(sink, config, model, counts, [], "hf", loftq_applied=False)
    assert [(e["code"], e["field"]) for e in events] == [("bias_no_effect", "bias")]


def test_tiled_mlp_on_a_backend_that_resolved_to_hf_warns(tiny_llama, data_dir, tmp_path):
    events = []
    sink = EventSink(open("/dev/null", "w"), callback=events.append)
    config = make(tiny_llama, data_dir, tmp_path, backend="auto", tiled_mlp=True)
    assert backends.resolve_backend(config) == "hf"  # no CUDA here
    model, _ = backends.load(config, "hf", torch.float32)
    assert not backends.tiled_mlp_applied(model)
    runner._setting_warnings(sink, config, model, backends.parameter_counts(model), [], "hf", loftq_applied=False)
    assert [(e["code"], e["field"]) for e in events] == [("tiled_mlp_not_applied", "tiled_mlp")]
    assert "the hf backend" in events[0]["message"]


def packed_attention_warnings(config, model, backend="hf"):
    events = []
    runner._packed_attention_warning(EventSink(open("/dev/null", "w"), callback=events.append), config, model, backend)
    return [(e["code"], e["field"]) for e in events]


def test_a_large_packed_micro_batch_on_sdpa_warns_about_its_attention_cost(tiny_llama, data_dir, tmp_path):
    config = make(tiny_llama, data_dir, tmp_path, packing=True, per_device_train_batch_size=8, max_length=128)
    trainer, _ = build_trainer(config)
    model = trainer.model
    assert model.config._attn_implementation == "sdpa"
    # The premise: the packed micro-batch reaches the model as ONE row of up to 8 x 128 tokens (padding-free), its
    # examples told apart only by position ids that restart at 0.
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 1 and 128 < batch["input_ids"].shape[1] <= 8 * 128
    assert int((batch["position_ids"][0] == 0).sum()) > 1
    # The tiny Llama: 4 heads x 16 wide; q and o 64x64, k and v 64x32, MLP 3 x 64x128 -> ratio 8·128/288 = 3.6
    assert (backends.attention_width(model), backends.layer_linear_params(model)) == (64, 36_864)
    assert packed_attention_warnings(config, model) == [("packed_attention_cost", "packing")]
    # Fewer tokens per micro-batch (ratio 0.44), no packing, or the unsloth backend: no warning.
    assert packed_attention_warnings(make(tiny_llama, data_dir, tmp_path, packing=True, max_length=128,
                                          per_device_train_batch_size=1), model) == []
    assert packed_attention_warnings(make(tiny_llama, data_dir, tmp_path, packing=False, max_length=128,
                                          per_device_train_batch_size=8), model) == []
    assert packed_attention_warnings(config, model, backend="unsloth") == []


def lr_curve(trainer, config, total=40):
    trainer.args = runner.sft_config(config, "messages", torch.float32, has_eval=config.has_eval)
    trainer.optimizer = trainer.lr_scheduler = None
    trainer.create_optimizer_and_scheduler(num_training_steps=total)
    curve = []
    for _ in range(total):
        curve.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    return curve


@pytest.fixture(scope="module")
def trainer(tiny_llama, data_dir, tmp_path_factory):
    config = make(tiny_llama, data_dir, tmp_path_factory.mktemp("sched"))
    return build_trainer(config)[0]


LR = 1e-3
SHAPES = {
    "linear": ({}, lambda c: c[4] == LR and c[-1] == pytest.approx(LR / 36) and all(a > b for a, b in zip(c[4:], c[5:]))),
    "cosine": ({"num_cycles": 0.5}, lambda c: c[4] == LR and c[22] == pytest.approx(LR / 2) and c[-1] < LR / 100),
    "cosine_with_restarts": ({"num_cycles": 2}, lambda c: any(b > a * 10 for a, b in zip(c[4:], c[5:]))),
    "polynomial": ({"power": 2.0, "lr_end": 1e-5}, lambda c: c[4] == LR and c[-1] > 1e-5 and c[-1] < LR / 10),
    "constant": ({}, lambda c: set(c) == {LR}),
    "constant_with_warmup": ({}, lambda c: c[0] == 0 and set(c[4:]) == {LR}),
    "inverse_sqrt": ({"timescale": 4}, lambda c: c[4] == LR and c[-1] == pytest.approx(LR / math.sqrt(39 / 4))),  # 1/sqrt(step/timescale)
    "cosine_with_min_lr": ({"min_lr_rate": 0.1}, lambda c: min(c[4:]) >= LR * 0.1 - 1e-12 and c[-1] < LR * 0.12),
    "warmup_stable_decay": ({"num_decay_steps": 10, "min_lr_ratio": 0.05},
                            lambda c: set(c[4:30]) == {LR} and c[-1] < LR * 0.1 and min(c) >= 0),
}


@pytest.mark.parametrize("name", list(SHAPES))
def test_each_scheduler_gives_its_lr_curve_with_the_configured_warmup(trainer, tiny_llama, data_dir, tmp_path, name):
    kwargs, shape = SHAPES[name]
    warmup = 0 if name == "constant" else 4
    config = make(tiny_llama, data_dir, tmp_path, learning_rate=LR, lr_scheduler_type=name,
                  lr_scheduler_kwargs=kwargs, warmup_steps=warmup)
    curve = lr_curve(trainer, config)
    if warmup:
        start = LR * kwargs.get("min_lr_ratio", 0)  # WSD warms up from its floor
        assert curve[0] == pytest.approx(start) and curve[2] == pytest.approx((start + LR) / 2) and curve[4] == pytest.approx(LR), curve[:6]
    assert shape(curve), curve


def test_warmup_ratio_resolves_to_steps_in_the_trainer(trainer, tiny_llama, data_dir, tmp_path):
    config = make(tiny_llama, data_dir, tmp_path, learning_rate=LR, warmup_steps=0.25)
    curve = lr_curve(trainer, config, total=40)
    assert curve[10] == pytest.approx(LR) and curve[9] < LR  # 25% of 40 = 10 steps of warmup


def test_reduce_lr_on_plateau_builds_the_plateau_scheduler(trainer, tiny_llama, data_dir, tmp_path):
    config = make(tiny_llama, data_dir, tmp_path, lr_scheduler_type="reduce_lr_on_plateau",
                  lr_scheduler_kwargs={"factor": 0.5, "patience": 1}, eval_split=0.1, eval_steps=2)
    trainer.args = runner.sft_config(config, "messages", torch.float32, has_eval=True)
    trainer.optimizer = trainer.lr_scheduler = None
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    from torch.optim.lr_scheduler import ReduceLROnPlateau

    assert isinstance(trainer.lr_scheduler, ReduceLROnPlateau)
    assert trainer.lr_scheduler.factor == 0.5 and trainer.lr_scheduler.patience == 1


def test_weight_decay_and_optimizer_reach_the_optimizer(trainer, tiny_llama, data_dir, tmp_path):
    config = make(tiny_llama, data_dir, tmp_path, weight_decay=0.07, optim="adamw_torch")
    lr_curve(trainer, config, total=2)
    decays = {g["weight_decay"] for g in trainer.optimizer.param_groups if g["params"]}
    assert 0.07 in decays
    assert "AdamW" in type(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer).__name__


def test_packing_produces_full_length_blocks(tiny_llama, data_dir, tmp_path):
    unpacked, _ = build_trainer(make(tiny_llama, data_dir, tmp_path, max_length=128))
    packed, _ = build_trainer(make(tiny_llama, data_dir, tmp_path, packing=True, max_length=128))
    lengths = sorted((len(row["input_ids"]) for row in packed.train_dataset), reverse=True)
    assert len(packed.train_dataset) < len(unpacked.train_dataset) / 3
    assert sum(len(r["input_ids"]) for r in packed.train_dataset) == sum(
        len(r["input_ids"]) for r in unpacked.train_dataset)  # nothing dropped
    # Best-fit decreasing packs whole examples: every block but the last is filled to at least 90% on average.
    assert max(lengths) <= 128 and sum(lengths[:-1]) / len(lengths[:-1]) >= 0.9 * 128, lengths


def test_hf_keeps_float32_adapters_where_trl_casts_a_quantized_models_to_bfloat16(tiny_llama, data_dir, tmp_path):
    model, _ = backends.load(make(tiny_llama, data_dir, tmp_path), "hf", torch.float32)
    frozen = {n: p.dtype for n, p in model.named_parameters() if not p.requires_grad}
    assert backends.keep_adapters_float32(model) == 0  # not quantized: TRL casts nothing, nothing to undo
    # What SFTTrainer.__init__ does to a 4-bit model's trainable weights (bitsandbytes needs a GPU: mimic its flag).
    model.get_base_model().is_loaded_in_4bit = True
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.to(torch.bfloat16)
    assert backends.keep_adapters_float32(model) > 0
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    assert {n: p.dtype for n, p in model.named_parameters() if not p.requires_grad} == frozen
