"""Seven architectures train on the hf backend with every linear layer adapted: Llama, Qwen2, Qwen3, Mistral,
Gemma 2, Gemma 3 (text) and Phi-3 (fused qkv_proj / gate_up_proj), built at tiny widths with the session's tokenizer,
two steps each through the runner. Counts are checked against the loaded model's own Linear layers."""
import pytest
import torch

from training.engine import runner
from training.engine.config import parse_config
from training.engine.events import EventSink
from training.engine.tiny import ARCHITECTURES, build_tiny_arch

from .conftest import base_config

R = 4


@pytest.fixture(scope="session")
def tiny_archs(tmp_path_factory, tiny_llama):
    root = tmp_path_factory.mktemp("archs")
    return {arch: str(build_tiny_arch(root / arch, arch, tokenizer_from=tiny_llama)) for arch in ARCHITECTURES}


def train(model: str, data_dir, out, **overrides) -> list[dict]:
    events: list[dict] = []
    config = parse_config(base_config(model, data_dir, out, max_steps=2, r=R, max_length=64,
                                      per_device_train_batch_size=4, **overrides))
    runner.run(config, EventSink(callback=events.append))
    return events


def expected(model: str, part: str = "") -> tuple[int, dict[str, int]]:
    """(in + out) x r over the model's torch Linear layers but lm_head (whose path contains `part`), and their
    count by name: computed from the model as loaded, not from the engine's resolution."""
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(model)
    params, counts = 0, {}
    for name, module in loaded.named_modules():
        if isinstance(module, torch.nn.Linear) and name != "lm_head" and part in name:
            params += R * (module.in_features + module.out_features)
            counts[name.rsplit(".", 1)[-1]] = counts.get(name.rsplit(".", 1)[-1], 0) + 1
    return params, counts


def one(events, type_):
    found = [e for e in events if e["type"] == type_]
    assert found, f"no {type_} event: {events[-1]}"
    return found[0]


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_each_architecture_trains_with_every_linear_layer_adapted(arch, tiny_archs, data_dir, tmp_path):
    events = train(tiny_archs[arch], data_dir, tmp_path / "out")
    finished = one(events, "finished")
    started = one(events, "started")
    params, counts = expected(tiny_archs[arch])
    assert started["trainable_params"] == params
    assert started["adapters"] == {"target_modules": "all-linear", "modules": counts, "layers": sum(counts.values())}
    assert not [e for e in events if e["type"] == "warning" and e["code"] == "target_modules_partial"]
    assert finished["step"] == 2 and finished["train_loss"] > 0


@pytest.mark.parametrize("group, part", [("attention", ".self_attn."), ("mlp", ".mlp.")])
def test_phi3s_attention_and_mlp_groups_take_its_fused_layers(group, part, tiny_archs, data_dir, tmp_path):
    events = train(tiny_archs["phi3"], data_dir, tmp_path / "out", target_modules=group)
    params, counts = expected(tiny_archs["phi3"], part)
    started = one(events, "started")
    assert started["trainable_params"] == params
    assert started["adapters"]["modules"] == counts
    assert set(counts) == ({"qkv_proj", "o_proj"} if group == "attention" else {"gate_up_proj", "down_proj"})
    assert one(events, "finished")["step"] == 2


def test_a_layer_name_the_model_lacks_fails_before_training_naming_its_layers(tiny_archs, data_dir, tmp_path):
    events = train(tiny_archs["phi3"], data_dir, tmp_path / "out", target_modules=["q_proj", "v_proj"])
    failed = one(events, "failed")
    assert failed["error_class"] == "ConfigError" and not [e for e in events if e["type"] == "started"]
    assert failed["errors"]["target_modules"].startswith("q_proj, v_proj: not a linear layer of this model")
    assert "qkv_proj" in failed["errors"]["target_modules"]
