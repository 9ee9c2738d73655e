"""A warm process's pure parts: its requests, which fields decide a base model, the checksum, and putting a model
back as it was loaded (a small torch module stands in for a base model)."""
import types

import pytest
import torch

from training.engine.config import parse_config
from training.engine.warm import BaseChanged, BaseState, RequestError, base_fields, parse_request, tensor_checksum


def config(**extra):
    return parse_config({"model": "m", "train_file": "t.jsonl", **extra})


def test_a_request_is_a_config_path_with_optional_stop_file_resume_cwd_and_time():
    request = parse_request('{"config": "/r/config.json", "stop_file": "/r/STOP", "sent": 1.5}')
    assert (request.config, request.stop_file, request.resume_from, request.cwd, request.sent) == (
        "/r/config.json", "/r/STOP", None, None, 1.5)


@pytest.mark.parametrize("line, fields", [
    ("not json", {"request"}),
    ("[1]", {"request"}),
    ('{"stop_file": "/s"}', {"config"}),
    ('{"config": "/c", "resume_from": 3, "sent": "now", "extra": 1}', {"resume_from", "sent", "extra"}),
])
def test_a_bad_request_names_its_fields(line, fields):
    with pytest.raises(RequestError) as caught:
        parse_request(line)
    assert set(caught.value.errors) == fields


def test_the_base_is_what_decides_the_loaded_weights():
    base = base_fields(config(), "hf", "float32")
    assert base == {"backend": "hf", "model": "m", "dtype": "float32", "load_in_4bit": False}
    # What only the adapters, the optimizer or the data see does not change the base...
    assert base_fields(config(r=8, lora_alpha=3, learning_rate=1e-3, seed=1, random_state=2, lora_dropout=0.1,
                              max_length=64, packing=True), "hf", "float32") == base
    # ...what is loaded does.
    assert base_fields(config(load_in_4bit=True), "hf", "float32") != base
    assert base_fields(config(), "hf", "bfloat16") != base
    assert base_fields(config(model="other"), "hf", "float32") != base
    # Unsloth loads for a length and patches for checkpointing and the tiled MLP.
    unsloth = base_fields(config(), "unsloth", "bfloat16")
    for change in ({"max_length": 64}, {"gradient_checkpointing": False}, {"tiled_mlp": True}):
        assert base_fields(config(**change), "unsloth", "bfloat16") != unsloth


def test_a_run_that_changes_its_base_in_place_keeps_no_base():
    assert base_fields(config(bias="all"), "hf", "float32") is None
    assert base_fields(config(bias="lora_only"), "unsloth", "bfloat16") is None
    assert base_fields(config(loftq_config={"loftq_bits": 4}), "hf", "float32") is None


def test_the_checksum_sees_any_changed_or_moved_value_and_is_exact():
    t = torch.arange(1000, dtype=torch.float32)
    swapped = t.clone()
    swapped[[3, 7]] = swapped[[7, 3]]
    nudged = t.clone()
    nudged[500] = torch.nextafter(nudged[500], torch.tensor(1e9))
    assert tensor_checksum(t) == tensor_checksum(t.clone())
    assert tensor_checksum(swapped) != tensor_checksum(t)
    assert tensor_checksum(nudged) != tensor_checksum(t)
    assert tensor_checksum(torch.zeros(3, dtype=torch.bfloat16)) != tensor_checksum(torch.ones(3, dtype=torch.bfloat16))
    assert tensor_checksum(torch.zeros(0)) == (0, 0)


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)
        self.register_buffer("scale", torch.ones(4))

    def forward(self, x):
        return self.proj(x) * self.scale


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.config = types.SimpleNamespace(use_cache=True)
        self.block = Block()
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.block(x))


def loaded():
    torch.manual_seed(0)
    model = Tiny()
    tokenizer = {"padding_side": "left"}  # stands for a tokenizer: deep-copied, and the modules' reference moved
    model.block.tokenizer_ref = tokenizer
    return model, tokenizer, BaseState(model, tokenizer)


def test_restore_undoes_what_a_run_does_to_the_modules():
    model, tokenizer, state = loaded()
    x = torch.randn(3, 4)
    expected = model(x).detach()
    # What PEFT, Unsloth and a trainer do to a base: wrap a layer, bind a fused forward, add hooks and flags, flip
    # training mode and config fields, freeze the base's weights.
    wrapper = torch.nn.Sequential(model.block.proj, torch.nn.Identity())
    model.block.proj = wrapper
    model.block.forward = types.MethodType(lambda self, x: x * 0, model.block)
    model.head.register_forward_hook(lambda module, args, out: out + 1)
    model.block.gradient_checkpointing = True
    model.config.use_cache = False
    model.train(False)
    for p in model.parameters():
        p.requires_grad_(False)
    tokenizer["padding_side"] = "right"

    fresh = state.fresh_tokenizer()
    state.restore(model, fresh)

    assert torch.equal(model(x), expected)
    assert model.block.proj is not wrapper and isinstance(model.block.proj, torch.nn.Linear)
    assert "forward" not in model.block.__dict__ and not model.head._forward_hooks
    assert not hasattr(model.block, "gradient_checkpointing") and model.config.use_cache is True
    assert model.training and all(p.requires_grad for p in model.parameters())  # as loaded
    assert model.block.tokenizer_ref is fresh and fresh == {"padding_side": "left"}


def test_restore_refuses_a_weight_the_run_changed():
    model, _, state = loaded()
    with torch.no_grad():
        model.head.weight[0, 0] += 1e-3
    with pytest.raises(BaseChanged, match="head.weight: its contents changed"):
        state.restore(model, state.fresh_tokenizer())


def test_restore_puts_back_a_weight_the_run_cast_in_place():
    model, _, state = loaded()
    x = torch.randn(3, 4)
    expected = model(x).detach()
    model.block.proj.weight.data = model.block.proj.weight.data.double()  # as an upcast of a frozen weight does
    state.restore(model, state.fresh_tokenizer())
    assert model.block.proj.weight.dtype == torch.float32 and torch.equal(model(x), expected)


def test_restore_refuses_a_weight_replaced_by_another_object():
    model, _, state = loaded()
    state.modules = [(m, s) for m, s in state.modules if m is not model.head]  # as if never recorded
    model.head.weight = torch.nn.Parameter(model.head.weight.detach().clone())
    with pytest.raises(BaseChanged, match="head.weight: its object changed"):
        state.restore(model, state.fresh_tokenizer())


def test_restore_refuses_a_buffer_the_run_moved_or_dropped():
    model, _, state = loaded()
    state.modules = [(m, s) for m, s in state.modules if m is not model.block]  # as if never recorded
    del model.block._buffers["scale"]
    with pytest.raises(BaseChanged, match="1 missing"):
        state.restore(model, state.fresh_tokenizer())
