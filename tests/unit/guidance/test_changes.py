"""The change a finding's Apply makes: its first-ranked knob moved the way its advice says, toward the seed's
recommended value when past it, else one notch, never out of the seed's range."""
from guidance import changes

BASE = {"learning_rate": 2e-4, "r": 16, "lora_alpha": 32, "use_rslora": False, "lora_dropout": 0.0,
        "weight_decay": 0.0, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1, "max_steps": 200,
        "warmup_steps": 0, "packing": False}


def test_a_flat_loss_raises_a_tiny_learning_rate_to_the_recommended_one():
    assert changes.finding_change("flat_loss", ["learning_rate", "lora_alpha"], {**BASE, "learning_rate": 2e-5}) == (
        "learning_rate", {"learning_rate": 2e-4})
    # Inside the range already: one doubling, and never past the range's top.
    assert changes.finding_change("flat_loss", ["learning_rate"], {**BASE, "learning_rate": 4e-4}) == (
        "learning_rate", {"learning_rate": 8e-4})
    assert changes.finding_change("flat_loss", ["learning_rate"], {**BASE, "learning_rate": 2e-3}) is None


def test_a_flat_loss_at_a_far_too_high_learning_rate_lowers_it():
    assert changes.finding_change("flat_loss", ["learning_rate"], {**BASE, "learning_rate": 0.5}) == (
        "learning_rate", {"learning_rate": 2e-4})


def test_spikes_lower_the_rate_or_raise_the_effective_batch():
    assert changes.finding_change("loss_spike", ["learning_rate"], {**BASE, "learning_rate": 1e-2}) == (
        "learning_rate", {"learning_rate": 2e-4})
    assert changes.finding_change("grad_norm_spike", ["gradient_accumulation_steps"], BASE) == (
        "gradient_accumulation_steps", {"gradient_accumulation_steps": 8})  # 2 x 8 = the seed's 16


def test_overfitting_adds_dropout_and_unstable_starts_lengthen_warmup():
    assert changes.finding_change("overfitting", ["lora_dropout"], BASE) == ("lora_dropout", {"lora_dropout": 0.05})
    assert changes.finding_change("early_instability", ["warmup_steps"], BASE) == ("warmup_steps", {"warmup_steps": 10})


def test_out_of_memory_halves_the_micro_batch_keeping_the_effective_batch():
    assert changes.finding_change("out_of_memory", ["gradient_accumulation_steps"],
                                  {**BASE, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 2}) == (
        "per_device_train_batch_size", {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 4})


def test_a_knob_with_no_concrete_move_is_skipped_for_the_next_and_none_when_none_has_one():
    assert changes.finding_change("lr_decayed_early", ["lr_scheduler_type"], BASE) is None
    assert changes.finding_change("throughput_below_packed", ["packing"], BASE) == ("packing", {"packing": True})
    assert changes.finding_change("unknown_code", ["learning_rate"], BASE) is None
