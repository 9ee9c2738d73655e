"""The model rule on its own: hub ids, folders inside the roots, and what is never a model source."""
import pytest

from training.model_source import ModelPolicy, model_choices, model_folders, model_source_error


@pytest.fixture
def layout(tmp_path):
    var = tmp_path / "var"
    for folder in ("models/tiny", "runs/1/adapter", "datasets/1", "registered", "elsewhere/model"):
        (var / folder).mkdir(parents=True)
    return var


def policy(var, *, hub=True, roots=None):
    return ModelPolicy.of(roots=roots or [var / "models"], hub=hub,
                          forbidden={var / "runs": "the runs' folders", var / "datasets": "the datasets' folders",
                                     var / "registered": "the registered dataset roots"})


@pytest.mark.parametrize("model", ["gpt2", "unsloth/Llama-3.2-1B-Instruct", "Qwen/Qwen2.5-0.5B", "org_1/model.v2"])
def test_hub_ids_are_allowed_while_the_hub_is_on(layout, model):
    assert model_source_error(model, policy(layout)) is None


def test_hub_ids_are_refused_when_the_deployment_is_offline(layout):
    error = model_source_error("unsloth/Llama-3.2-1B", policy(layout, hub=False))
    assert "TUNEBOARD_HUB_OFFLINE" in error and str(layout / "models") in error


def test_a_folder_inside_the_roots_is_allowed(layout):
    assert model_source_error(str(layout / "models" / "tiny"), policy(layout)) is None
    assert model_source_error(str(layout / "models"), policy(layout)) is None


@pytest.mark.parametrize("where, what", [("runs/1/adapter", "the runs' folders"), ("runs", "the runs' folders"),
                                         ("datasets/1", "the datasets' folders"),
                                         ("registered", "the registered dataset roots")])
def test_runs_datasets_and_dataset_roots_are_refused_even_inside_the_roots(layout, where, what):
    # A careless roots setting (the whole var dir) must not open the runs' folders.
    error = model_source_error(str(layout / where), policy(layout, roots=[layout]))
    assert error is not None and what in error and "TUNEBOARD_MODEL_ROOTS" in error and "Start from" in error


def test_a_folder_outside_the_roots_is_refused_naming_them(layout):
    error = model_source_error(str(layout / "elsewhere" / "model"), policy(layout))
    assert "outside the model roots" in error and str(layout / "models") in error


def test_dot_dot_climbs_out_of_a_root_and_is_refused(layout):
    climb = f"{layout}/models/../runs/1/adapter"
    assert "the runs' folders" in model_source_error(climb, policy(layout))
    assert "outside" in model_source_error(f"{layout}/models/../elsewhere/model", policy(layout))


def test_a_symlink_is_judged_by_where_it_leads(layout):
    link = layout / "models" / "innocent"
    link.symlink_to(layout / "runs" / "1" / "adapter")
    error = model_source_error(str(link), policy(layout))
    assert "the runs' folders" in error
    outside = layout / "models" / "out"
    outside.symlink_to(layout / "elsewhere" / "model")
    assert "really" in model_source_error(str(outside), policy(layout))


@pytest.mark.parametrize("model", ["./models/tiny", "../var/runs/1", "~/models", "var/models/tiny",
                                   "models\\tiny"])
def test_relative_paths_are_refused(layout, model):
    error = model_source_error(model, policy(layout))
    assert error is not None and "TUNEBOARD_MODEL_ROOTS" in error


@pytest.mark.parametrize("model", ["a..b/c", "org--x/y", "-bad", "org/na me", "org/.hidden"])
def test_malformed_hub_ids_are_refused(layout, model):
    assert "neither a hub id" in model_source_error(model, policy(layout))


def test_no_roots_refuses_every_folder(layout):
    bare = ModelPolicy.of(roots=[], forbidden={}, hub=True)
    assert "(none configured)" in model_source_error(str(layout / "models" / "tiny"), bare)


def test_the_pickers_folders_are_the_roots_model_folders_the_rule_allows(layout):
    for folder in ("models/tiny", "models/org/base", "runs/1/adapter", "elsewhere/model"):
        (layout / folder).mkdir(parents=True, exist_ok=True)
        (layout / folder / "config.json").write_text("{}")
    (layout / "models" / "escape").symlink_to(layout / "elsewhere" / "model")
    (layout / "models" / "empty").mkdir()
    # Roots that overlap the runs' folder: its run folders are still never listed.
    rules = policy(layout, roots=[layout / "models", layout / "runs"])
    assert model_folders(rules) == [str(layout / "models/org/base"), str(layout / "models/tiny")]


def test_the_teams_recent_models_are_kept_only_where_the_rule_allows_them(layout):
    (layout / "models/tiny/config.json").write_text("{}")
    recent = ["org/new", str(layout / "runs/1/adapter"), str(layout / "models/tiny"), "org/new", " ", "/etc"]
    choices = model_choices(policy(layout), recent)
    assert choices.folders == (str(layout / "models/tiny"),) and choices.recent == ("org/new",) and choices.hub
    assert model_choices(policy(layout, hub=False), recent).recent == ()
