"""Compare's reasoning on derived values and its warning when runs' losses cannot be set side by side."""
from guidance import comparison, content

BASE = {"model": "m", "train_file": "t.jsonl", "per_device_train_batch_size": 2, "gradient_accumulation_steps": 4,
        "r": 16, "lora_alpha": 32, "use_rslora": False, "max_length": 1024, "packing": True}


def _with(**values):
    return {**BASE, **values}


def test_same_effective_batch_from_another_split_is_not_called_smaller():
    prediction = comparison.prediction_for_change("gradient_accumulation_steps", BASE,
                                               _with(per_device_train_batch_size=8, gradient_accumulation_steps=1))
    assert "smaller effective batch" not in prediction
    assert prediction.startswith("same effective batch, 8 (2×4 and 8×1)")


def test_accumulation_read_through_the_effective_batch_it_makes():
    # Fewer accumulation steps, but a micro-batch four times larger: the effective batch doubles.
    prediction = comparison.prediction_for_change("gradient_accumulation_steps", BASE,
                                               _with(per_device_train_batch_size=8, gradient_accumulation_steps=2))
    assert prediction.startswith(content.get("gradient_accumulation_steps").predictions["up"])
    assert "effective batch 8 (2×4) → 16 (8×2)" in prediction


def test_effective_batch_counts_devices():
    prediction = comparison.prediction_for_change("gradient_accumulation_steps", BASE,
                                               _with(gradient_accumulation_steps=2, devices=2))
    assert prediction.startswith("same effective batch, 8 (2×4 and 2×2×2 GPUs)")


def test_alpha_that_follows_r_keeps_the_lora_scale():
    new = _with(r=32, lora_alpha=64)
    assert comparison.prediction_for_change("lora_alpha", BASE, new).startswith("same LoRA scale, 2 (32/16 and 64/32)")
    r_prediction = comparison.prediction_for_change("r", BASE, new)
    assert r_prediction.startswith(content.get("r").predictions["up"])
    assert "same LoRA scale" in r_prediction


def test_r_up_with_alpha_fixed_lowers_the_scale():
    prediction = comparison.prediction_for_change("r", BASE, _with(r=64))
    assert content.get("lora_alpha").predictions["down"] in prediction
    assert "LoRA scale 2 (32/16) → 0.5 (32/64)" in prediction


def test_rslora_with_alpha_rematched_keeps_the_gain_and_without_it_says_the_jump():
    rematched = comparison.prediction_for_change("use_rslora", BASE, _with(use_rslora=True, lora_alpha=8))
    assert rematched.startswith("scale becomes 8/√16 with alpha re-matched, so the gain is kept (2)")
    unchanged = comparison.prediction_for_change("use_rslora", BASE, _with(use_rslora=True))
    assert unchanged.startswith(content.get("use_rslora").predictions["on"])
    assert "LoRA scale 2 (32/16) → 8 (32/√16)" in unchanged


def test_a_field_without_a_derived_value_keeps_its_own_prediction():
    assert (comparison.prediction_for_change("learning_rate", BASE, _with(learning_rate=1e-3))
            == content.get("learning_rate").predictions["up"])
    assert comparison.prediction_for_change("gradient_accumulation_steps", BASE, BASE) == ""


def test_derived_changes_list_each_value_whose_makeup_moved():
    found = {c["name"]: c for c in comparison.derived_changes(
        BASE, _with(per_device_train_batch_size=8, gradient_accumulation_steps=1, max_length=2048))}
    assert found["effective_batch"]["from"] == "8 (2×4)" and found["effective_batch"]["to"] == "8 (8×1)"
    assert found["effective_batch"]["reason"].startswith("same effective batch")
    assert found["tokens_per_step"]["from"] == "8,192" and found["tokens_per_step"]["to"] == "16,384"
    assert "more tokens" in found["tokens_per_step"]["reason"]
    assert "lora_scale" not in found
    assert comparison.derived_changes(BASE, dict(BASE)) == []


def _run(label, dataset_id=1, dataset_name="alpaca", **config):
    return comparison.TrainedRun(label=label, dataset_id=dataset_id, dataset_name=dataset_name, config=_with(**config))


def test_runs_on_different_datasets_are_said_first_to_be_not_comparable():
    reasons = comparison.not_comparable([_run("#1"), _run("#2", dataset_id=2, dataset_name="dolly", learning_rate=1e-3),
                                      _run("#3")])
    assert reasons[0].startswith("Losses not comparable: the runs trained on different datasets")
    assert "(alpaca: #1, #3; dolly: #2)" in reasons[0]
    assert len(reasons) == 1


def test_two_datasets_with_one_name_are_told_apart_by_id():
    reasons = comparison.not_comparable([_run("#1"), _run("#2", dataset_id=7)])
    assert "(alpaca (#1): #1; alpaca (#7): #2)" in reasons[0]


def test_model_and_max_length_differences_each_get_a_reason_in_order():
    reasons = comparison.not_comparable([_run("#1"), _run("#2", model="other", max_length=512)])
    assert [r.split(":")[0] for r in reasons] == ["Losses not comparable"] * 2
    assert "different models" in reasons[0] and "(m: #1; other: #2)" in reasons[0]
    assert "different max_length" in reasons[1] and "(1024: #1; 512: #2)" in reasons[1]


def test_runs_that_differ_only_in_a_hyperparameter_are_comparable():
    assert comparison.not_comparable([_run("#1"), _run("#2", learning_rate=1e-3, r=8)]) == []
    assert comparison.not_comparable([_run("#1")]) == []


def test_another_eval_set_makes_only_eval_losses_not_comparable():
    reasons = comparison.not_comparable([_run("#1", eval_split=0.1), _run("#2", eval_split=0.2)])
    assert reasons == ["Eval losses not comparable: the runs held out different eval sets "
                       "(a 10% split: #1; a 20% split: #2)."]
