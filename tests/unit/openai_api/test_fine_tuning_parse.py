"""A fine-tuning job request checked and mapped onto the engine's fields without a database: the hyperparameters
(top level or the supervised method's) against the seed's default rate, the extension's engine fields, and every
bad parameter named as the request names it."""
import pytest

from training.openai_api.errors import OpenAIError
from training.openai_api.fine_tuning import RECOMMENDED_LR, hyperparameters_of, job_status, param_of, parse_job

BASE = {"model": "/models/tiny", "training_file": "file-3"}


def test_hyperparameters_suffix_seed_and_the_extension_map_onto_the_engines_fields():
    job = parse_job({**BASE, "hyperparameters": {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 0.5},
                     "suffix": " bot ", "seed": 11, "tuneboard": {"r": 32, "max_steps": 9, "queue": "gpu-a"}})
    assert job.overrides == {"model": "/models/tiny", "num_train_epochs": 3, "per_device_train_batch_size": 4,
                             "learning_rate": 0.5 * RECOMMENDED_LR, "seed": 11, "r": 32, "max_steps": 9}
    assert (job.suffix, job.queue, job.training_file) == ("bot", "gpu-a", "file-3")
    method = parse_job({**BASE, "method": {"type": "supervised", "supervised": {
        "hyperparameters": {"n_epochs": "auto", "batch_size": 2}}}})
    assert method.overrides == {"model": "/models/tiny", "per_device_train_batch_size": 2}
    assert hyperparameters_of({"num_train_epochs": 3, "per_device_train_batch_size": 4, "learning_rate": 1e-4}) == {
        "n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 0.5}


@pytest.mark.parametrize("body, param", [
    ({**BASE, "hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
    ({**BASE, "hyperparameters": {"batch_size": 2.5}}, "hyperparameters.batch_size"),
    ({**BASE, "hyperparameters": {"learning_rate_multiplier": -1}}, "hyperparameters.learning_rate_multiplier"),
    ({**BASE, "hyperparameters": {"warmup": 3}}, "hyperparameters.warmup"),
    ({**BASE, "method": {"type": "dpo"}}, "method.type"),
    ({**BASE, "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": -2}}}},
     "method.supervised.hyperparameters.n_epochs"),
    ({**BASE, "seed": -4}, "seed"),
    ({**BASE, "suffix": "x" * 65}, "suffix"),
    ({**BASE, "tuneboard": {"learning_rate": 1e-3}}, "tuneboard.learning_rate"),
    ({**BASE, "tuneboard": {"train_file": "/etc/passwd"}}, "tuneboard.train_file"),
    ({**BASE, "integrations": [{"type": "wandb"}]}, "integrations"),
    ({**BASE, "frobnicate": 1}, "frobnicate"),
    ({"training_file": "file-1"}, "model"),
    ({"model": "m"}, "training_file"),
])
def test_a_bad_parameter_is_a_400_naming_it(body, param):
    with pytest.raises(OpenAIError) as refused:
        parse_job(body)
    assert (refused.value.status, refused.value.param) == (400, param)


def test_the_engines_field_errors_and_the_run_statuses_are_named_as_openai_names_them():
    assert param_of("num_train_epochs") == "hyperparameters.n_epochs"
    assert param_of("learning_rate") == "hyperparameters.learning_rate_multiplier"
    assert param_of("lora_dropout") == "tuneboard.lora_dropout" and param_of("model") == "model"
    assert {s: job_status(s) for s in ("queued", "starting", "running", "stopping", "succeeded", "failed", "lost",
                                       "stopped")} == {
        "queued": "queued", "starting": "running", "running": "running", "stopping": "running",
        "succeeded": "succeeded", "failed": "failed", "lost": "failed", "stopped": "cancelled"}
