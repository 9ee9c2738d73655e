"""target_modules resolved on a model's own linear layers (training/engine/targets.py), from config.json on the meta
device, for the seven architectures' layer layouts, and the refusals and warnings of what cannot be adapted."""
import pytest
import torch
from transformers import AutoConfig

from training.engine import targets
from training.engine.config import ConfigError
from training.engine.tiny import ARCH_WIDTHS, ARCHITECTURES

R = 8


def config_json(arch: str) -> dict:
    """What build_tiny_arch saves as config.json, without building or saving a model."""
    return AutoConfig.for_model(ARCHITECTURES[arch], vocab_size=512, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                tie_word_embeddings=False, **ARCH_WIDTHS["tiny"]).to_dict()


def lora_params_by_hand(arch: str, group: str | None = None) -> int:
    """An independent count: (in + out) x r over the model's torch Linear layers, lm_head left out, restricted to
    one block kind by its attribute name in transformers' decoder layers (self_attn, mlp)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config_json(arch)))
    part = {"attention": ".self_attn.", "mlp": ".mlp.", None: ""}[group]
    return sum(R * (m.in_features + m.out_features) for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and name != "lm_head" and part in name)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_all_linear_is_every_linear_layer_but_the_output_embedding(arch):
    layout = targets.layout_from_config(config_json(arch))
    resolution = targets.resolve(layout, "all-linear")
    assert resolution.lora_params(R) == lora_params_by_hand(arch)
    assert "lm_head" not in resolution.counts() and not resolution.shortfalls
    assert set(resolution.counts().values()) == {ARCH_WIDTHS["tiny"]["num_hidden_layers"]}


def test_phi3s_fused_layers_are_its_attention_and_mlp():
    layout = targets.layout_from_config(config_json("phi3"))
    assert targets.resolve(layout, "all-linear").counts() == {"o_proj": 2, "qkv_proj": 2, "gate_up_proj": 2,
                                                              "down_proj": 2}
    attention, mlp = targets.resolve(layout, "attention"), targets.resolve(layout, "mlp")
    assert attention.target_modules == ("o_proj", "qkv_proj") and mlp.target_modules == ("gate_up_proj", "down_proj")
    assert attention.lora_params(R) == lora_params_by_hand("phi3", "attention")
    assert mlp.lora_params(R) == lora_params_by_hand("phi3", "mlp")
    # Llama's names on Phi-3 would leave the fused layers without adapters: only o_proj and down_proj remain.
    assert targets.resolve(layout, "all-linear").lora_params(R) > targets.resolve(
        layout, ["o_proj", "down_proj"]).lora_params(R)


def test_an_unknown_name_is_refused_listing_the_models_linear_layers():
    layout = targets.layout_from_config(config_json("phi3"))
    with pytest.raises(ConfigError) as caught:
        targets.resolve(layout, ["q_proj", "o_proj"])
    message = caught.value.errors["target_modules"]
    assert message.startswith("q_proj: not a linear layer") and "qkv_proj, gate_up_proj, down_proj" in message


def test_a_list_may_name_the_output_layer_but_all_linear_never_takes_it():
    layout = targets.layout_from_config(config_json("llama"))
    assert targets.resolve(layout, ["q_proj", "lm_head"]).counts() == {"q_proj": 2, "lm_head": 1}


class Block(torch.nn.Module):
    def __init__(self, with_q: bool):
        super().__init__()
        self.self_attn = torch.nn.Module()
        if with_q:
            self.self_attn.q_proj = torch.nn.Linear(8, 8)
        self.self_attn.o_proj = torch.nn.Linear(8, 8)
        self.self_attn.rotary = torch.nn.Module()
        self.self_attn.rotary.mix = torch.nn.Parameter(torch.zeros(8, 8))  # a weight no Linear holds
        self.mlp = torch.nn.Module()
        self.mlp.down_proj = torch.nn.Linear(8, 8)


class Hybrid(torch.nn.Module):
    """Two decoder layers, one without q_proj; a vision block whose projection shares the name q_proj."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList([Block(True), Block(False)])
        self.vision = torch.nn.Module()
        self.vision.q_proj = torch.nn.Linear(8, 8)


def test_a_name_in_some_layers_only_and_weights_no_linear_holds_are_shortfalls():
    layout = targets.layout_of(Hybrid())
    listed = targets.resolve(layout, ["q_proj"])
    assert listed.counts() == {"q_proj": 2}  # layers.0's and the vision block's
    assert any("q_proj, which 1 of the 2 layers of layers have" in s for s in listed.shortfalls)
    attention = targets.resolve(layout, "attention")
    assert attention.counts() == {"q_proj": 1, "o_proj": 2}
    assert any("not linear layers" in s and "layers.0.self_attn.rotary" in s for s in attention.shortfalls)
    # q_proj also names the vision block's layer: PEFT gets full paths, so only the attention blocks' are adapted.
    assert "layers.0.self_attn.q_proj" in attention.target_modules and "vision.q_proj" not in attention.target_modules
    assert targets.resolve(layout, "mlp").target_modules == ("down_proj",)


def test_a_group_that_finds_nothing_is_refused():
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList([torch.nn.Module()])
    model.layers[0].mlp = torch.nn.Module()
    model.layers[0].mlp.fc = torch.nn.Linear(4, 4)
    with pytest.raises(ConfigError, match="'attention' finds no linear layer"):
        targets.resolve(targets.layout_of(model), "attention")


def test_a_config_transformers_cannot_build_has_no_layout():
    assert targets.layout_from_config({"hidden_size": 64}) is None
    assert targets.layout_from_config({"model_type": "no-such-architecture"}) is None


def test_check_resolves_target_modules_on_the_models_config_before_any_weight_loads(tmp_path, capsys):
    import json

    from training.engine.__main__ import main

    (tmp_path / "config.json").write_text(json.dumps(config_json("phi3")))
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"model": str(tmp_path), "train_file": "t.jsonl", "target_modules": ["q_proj"]}))
    assert main(["check", str(path)]) == 2
    assert "q_proj: not a linear layer" in json.loads(capsys.readouterr().out)["errors"]["target_modules"]
    path.write_text(json.dumps({"model": str(tmp_path), "train_file": "t.jsonl", "r": R}))
    assert main(["check", str(path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["adapters"] == {"modules": {"o_proj": 2, "qkv_proj": 2, "gate_up_proj": 2, "down_proj": 2},
                               "trainable_params": lora_params_by_hand("phi3")}
