"""Guidance content: every seed parameter has a valid file, the seed's numbers are in it, broken files fail loudly."""
import re
import shutil
from pathlib import Path

import pytest
import yaml

from guidance import content
from guidance.content import ContentError, load_all
from training.engine.config import TrainConfig, parse_config

CONTENT_DIR = Path(content.__file__).parent / "content"

# Written out here rather than imported, so a parameter dropped from the loader's list still fails this test.
SEED_PARAMS = [
    "dtype", "load_in_4bit", "r", "lora_alpha", "lora_dropout", "bias", "use_rslora", "loftq_config",
    "packing", "gradient_accumulation_steps", "warmup_steps", "learning_rate", "optim", "weight_decay",
    "lr_scheduler_type",
]
SECTIONS = ["Definition", "Impact and symptoms", "Simple default", "Detailed configuration", "Tuning process", "Sources"]


def front_matter(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8").split("---\n")[1])


def body(param: str) -> str:
    return (CONTENT_DIR / f"{param}.md").read_text(encoding="utf-8")


def section(param: str, name: str) -> str:
    return load_all()[param].sections[name]["markdown"]


def flat(text: str) -> str:
    """Markdown with line breaks and indentation collapsed, so a phrase wrapped across lines still matches."""
    return re.sub(r"\s+", " ", text)


@pytest.fixture
def content_copy(tmp_path):
    """A writable copy of the real content directory, to break one file at a time."""
    target = tmp_path / "content"
    shutil.copytree(CONTENT_DIR, target)
    return target


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"fixture text not found in {path.name}: {old!r}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


# --- the real content -------------------------------------------------------------------------------------------

def test_every_seed_parameter_has_content():
    loaded = load_all()
    assert [p for p in SEED_PARAMS if p not in loaded] == []
    for param in SEED_PARAMS:
        assert (CONTENT_DIR / f"{param}.md").is_file()


def test_every_content_file_names_a_parameter_the_engine_accepts():
    files = sorted(CONTENT_DIR.glob("*.md"))
    assert len(files) >= len(SEED_PARAMS)
    for path in files:
        param = front_matter(path)["param"]
        assert param in TrainConfig.model_fields, f"{path.name} names {param!r}, which TrainConfig does not accept"
        assert path.stem == param


@pytest.mark.parametrize("param", SEED_PARAMS)
def test_each_file_has_the_six_sections_in_order(param):
    headings = [line[3:].strip() for line in body(param).splitlines() if line.startswith("## ")]
    assert headings == SECTIONS
    assert list(load_all()[param].sections) == SECTIONS


@pytest.mark.parametrize("param", SEED_PARAMS)
def test_each_simple_default_is_a_value_the_engine_accepts(param):
    default = load_all()[param].default
    config = parse_config({"model": "m", "train_file": "t", param: default})
    value = getattr(config, param)
    assert (value.model_dump() if hasattr(value, "model_dump") else value) == default


@pytest.mark.parametrize("param", SEED_PARAMS)
def test_each_section_is_rendered_to_html_with_slug_anchors(param):
    guidance = load_all()[param]
    for name, rendered in guidance.sections.items():
        assert rendered["html"].strip().startswith("<"), f"{param}/{name} not rendered"
        assert rendered["anchor"] in guidance.anchors
    assert all(re.fullmatch(r"[0-9a-z_]+", anchor) for anchor in guidance.anchors)
    # Subheadings keep their ids in the rendered HTML, so a link to param#anchor lands.
    html = "".join(s["html"] for s in guidance.sections.values())
    for anchor in list(guidance.anchors)[1:]:
        if anchor not in {s["anchor"] for s in guidance.sections.values()}:
            assert f'id="{anchor}"' in html


@pytest.mark.parametrize("param", ["r", "lora_alpha", "lora_dropout", "gradient_accumulation_steps", "warmup_steps",
                                   "learning_rate", "weight_decay"])
def test_numeric_parameters_have_too_high_and_too_low_anchors_under_impact(param):
    guidance = load_all()[param]
    impact = guidance.sections["Impact and symptoms"]["html"]
    assert 'id="too_high"' in impact and 'id="too_low"' in impact


@pytest.mark.parametrize("param", SEED_PARAMS)
def test_each_one_line_and_predictions_are_short_single_lines(param):
    guidance = load_all()[param]
    assert "\n" not in guidance.one_line and len(guidance.one_line) <= 200
    assert guidance.predictions and all("\n" not in text for text in guidance.predictions.values())
    assert set(guidance.related) <= set(SEED_PARAMS) - {param}


def test_load_all_is_cached_and_get_finds_one_parameter():
    assert load_all() is load_all()
    assert content.get("lora_alpha").param == "lora_alpha"
    with pytest.raises(KeyError, match="max_length"):
        content.get("max_length")


# --- the seed's facts are where a reader looks for them ----------------------------------------------------------

def test_rank_file_has_the_dataset_size_buckets():
    table = flat(section("r", "Detailed configuration"))
    for size, ranks in [("< 500", "4–8"), ("500–2,000", "8–16"), ("2,000–10,000", "16–32"),
                        ("10,000–50,000", "32–64"), ("50,000–200,000", "64"), ("200,000+", "64–128")]:
        assert re.search(rf"\| {re.escape(size)} [^|]*\| \*\*{re.escape(ranks)}\*\*", table), (size, ranks)
    assert "2,000 highly repetitive examples behave like 500" in table
    tuning = flat(section("r", "Tuning process"))
    assert "8, 16, 32" in tuning and "smallest" in tuning


def test_bias_default_is_the_string_none_and_the_slip_is_called_out():
    guidance = load_all()["bias"]
    assert guidance.default == "none"
    simple = section("bias", "Simple default")
    assert '**`"none"`**' in simple and "not Python `None`" in simple
    assert "Set bias = None" not in body("bias").replace('"Set bias = None"', "")


def test_weight_decay_has_the_log_grid_refinements_and_no_placeholder_heading():
    tuning = flat(section("weight_decay", "Tuning process"))
    assert "0.0, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1" in tuning
    assert "| 0.01 | 0.005, 0.01, 0.02 |" in tuning and "| 0.03 | 0.02, 0.03, 0.05 |" in tuning
    assert "Parameter Name" not in body("weight_decay")
    assert "**0.0–0.001**" in section("weight_decay", "Simple default")
    assert "**0.03–0.1**" in section("weight_decay", "Simple default")


def test_dropout_notches_and_starting_points():
    detailed = flat(section("lora_dropout", "Detailed configuration"))
    assert "**0.0, 0.03, 0.05, 0.1**" in detailed
    simple = section("lora_dropout", "Simple default")
    assert "**0.05**" in simple and "**0.1**" in simple and "**0.0–0.03**" in simple


def test_rslora_gain_matching_rule_and_worked_example():
    simple = flat(section("use_rslora", "Simple default"))
    assert "alpha ≈ g·√r" in simple
    assert "alpha ≈ 2·√64 = 16" in simple
    tuning = flat(section("use_rslora", "Tuning process"))
    assert "{0.5, 0.75, 1.0, 1.5, 2.0} × g_target" in tuning
    assert "r ∈ {8, 16, 32, 64}" in tuning


def test_warmup_ratio_floor_and_trl1_form():
    simple = flat(section("warmup_steps", "Simple default"))
    assert "`warmup_steps = 0.03`" in simple and "**10–25 steps**" in simple and "~500" in simple
    assert "**0.05–0.10**" in simple
    assert "warmup_ratio` argument is gone" in flat(section("warmup_steps", "Definition"))
    tuning = flat(section("warmup_steps", "Tuning process"))
    assert "{0.00, 0.01, 0.03, 0.06, 0.10}" in tuning and "{0, 10, 25, 50, 100}" in tuning


def test_loftq_sweeps_and_defaults():
    tuning = flat(section("loftq_config", "Tuning process"))
    assert "**{1, 2, 4, 5, 8}**" in tuning
    assert "**{4, 8}**" in tuning and "**{2, 4}**" in tuning
    assert load_all()["loftq_config"].default == {"loftq_bits": 4, "loftq_iter": 4}


def test_grad_accum_formula_and_table():
    simple = flat(section("gradient_accumulation_steps", "Simple default"))
    assert "ceil(16 / (per_device_train_batch_size × world_size))" in simple
    assert "| 1 | **16** |" in simple and "| 2 | **8** |" in simple
    assert "{1, 2, 4, 8, 16, 32}" in section("gradient_accumulation_steps", "Tuning process")


def test_learning_rate_defaults_and_grids():
    simple = section("learning_rate", "Simple default")
    assert "**2e-4**" in simple and "**2e-5**" in simple
    tuning = flat(section("learning_rate", "Tuning process"))
    assert "{5e-5, 1e-4, 2e-4, 4e-4, 8e-4}" in tuning
    assert "{1e-4, 1.5e-4, 2e-4, 2.5e-4, 3e-4}" in tuning
    assert "~10–30%" in tuning


def test_optim_candidates_are_values_the_engine_accepts():
    tuning = section("optim", "Tuning process")
    for name in ["adamw_torch_fused", "adamw_torch", "paged_adamw_8bit", "adamw_bnb_8bit"]:
        assert f"`{name}`" in tuning
        parse_config({"model": "m", "train_file": "t", "optim": name})


def test_scheduler_file_lists_every_scheduler_with_its_kwargs():
    from training.engine.config import SCHEDULER_KWARGS

    definition = section("lr_scheduler_type", "Definition")
    for scheduler, kwargs in SCHEDULER_KWARGS.items():
        row = next((line for line in definition.splitlines() if line.startswith(f"| `{scheduler}` |")), None)
        assert row is not None, scheduler
        for kwarg in kwargs:
            assert f"`{kwarg}`" in row, (scheduler, kwarg)
    tuning = flat(section("lr_scheduler_type", "Tuning process"))
    for grid in ["{0.5, 1.0}", "{0.02, 0.05, 0.1, 0.2}", "{0.2, 0.4, 0.6}", "{0.0, 0.02, 0.05, 0.1}", "{1, 2, 4}",
                 "{0.5, 0.2}"]:
        assert grid in tuning


def test_examples_use_trl1_names():
    for param in SEED_PARAMS:
        code = "\n".join(re.findall(r"```python\n(.*?)```", body(param), flags=re.S))
        assert "tokenizer=" not in code and "max_seq_length" not in code and "warmup_ratio=" not in code, param


# --- broken files fail at load, naming the file and the problem ---------------------------------------------------

def test_a_missing_section_names_the_file_and_the_section(content_copy):
    path = content_copy / "lora_alpha.md"
    edit(path, "## Tuning process\n", "")
    with pytest.raises(ContentError, match=r"lora_alpha\.md: .*missing section\(s\): Tuning process"):
        load_all(content_copy)


def test_sections_out_of_order_are_refused(content_copy):
    path = content_copy / "r.md"
    text = path.read_text(encoding="utf-8")
    sources = text[text.index("## Sources"):]
    path.write_text(text.replace(sources, "").replace("## Definition", sources + "\n## Definition"),
                    encoding="utf-8")
    with pytest.raises(ContentError, match=r"r\.md: sections out of order"):
        load_all(content_copy)


def test_an_unknown_section_is_refused(content_copy):
    edit(content_copy / "packing.md", "## Sources", "## Further reading\n\ntext\n\n## Sources")
    with pytest.raises(ContentError, match=r"packing\.md: unexpected section\(s\): Further reading"):
        load_all(content_copy)


def test_a_param_the_engine_does_not_accept_is_refused(content_copy):
    path = content_copy / "optim.md"
    edit(path, "param: optim", "param: optimizer")
    path.rename(content_copy / "optimizer.md")
    with pytest.raises(ContentError, match=r"optimizer\.md: param 'optimizer' is not a TrainConfig field"):
        load_all(content_copy)


def test_a_file_name_that_is_not_a_slug_is_refused(content_copy):
    (content_copy / "bias.md").rename(content_copy / "Bias-Term.md")
    with pytest.raises(ContentError, match=r"Bias-Term\.md: file name .* is not a slug"):
        load_all(content_copy)


def test_a_param_that_does_not_match_its_file_is_refused(content_copy):
    edit(content_copy / "packing.md", "param: packing", "param: eval_packing")
    with pytest.raises(ContentError, match=r"packing\.md: param 'eval_packing' does not match the file name"):
        load_all(content_copy)


def test_a_missing_parameter_file_is_named(content_copy):
    (content_copy / "weight_decay.md").unlink()
    with pytest.raises(ContentError, match=r"no guidance for: weight_decay \(expected weight_decay\.md\)"):
        load_all(content_copy)


def test_a_missing_front_matter_key_is_named(content_copy):
    edit(content_copy / "r.md", "default_note:", "note:")
    with pytest.raises(ContentError, match=r"r\.md: front matter is missing: default_note"):
        load_all(content_copy)


def test_a_default_the_engine_would_refuse_is_refused(content_copy):
    # The seed's slip, "bias = None", written into the file.
    edit(content_copy / "bias.md", 'default: "none"', "default: null")
    with pytest.raises(ContentError, match=r"bias\.md: default None is not a value TrainConfig accepts for bias"):
        load_all(content_copy)


def test_a_default_written_as_a_yaml_string_is_refused(content_copy):
    # YAML 1.1 reads 2e-4 (no dot) as a string; the engine wants a float.
    edit(content_copy / "learning_rate.md", "default: 2.0e-4", "default: 2e-4")
    with pytest.raises(ContentError, match=r"learning_rate\.md: default '2e-4' is not a value"):
        load_all(content_copy)


def test_predictions_must_cover_the_parameters_change_directions(content_copy):
    edit(content_copy / "use_rslora.md", "  off:", "  switched_off:")
    with pytest.raises(ContentError, match=r"use_rslora\.md: predictions for use_rslora \(switch\) must cover: off"):
        load_all(content_copy)


def test_a_prediction_for_a_value_the_engine_does_not_offer_is_refused(content_copy):
    edit(content_copy / "optim.md", "  adamw_torch:", "  sgd:")
    with pytest.raises(ContentError, match=r"optim\.md: predictions has unknown key\(s\) sgd"):
        load_all(content_copy)


def test_related_must_name_parameters_with_guidance(content_copy):
    edit(content_copy / "r.md", "related: [lora_alpha,", "related: [max_length, lora_alpha,")
    with pytest.raises(ContentError, match=r"r\.md: related names parameter\(s\) without guidance: max_length"):
        load_all(content_copy)


def test_a_heading_anchor_that_is_not_a_slug_is_refused(content_copy):
    edit(content_copy / "warmup_steps.md", "### Too low {#too_low}", "### Too low {#Too-Low}")
    with pytest.raises(ContentError, match=r"warmup_steps\.md: heading 'Too low' gives anchor 'Too-Low'"):
        load_all(content_copy)


def test_a_duplicate_anchor_is_refused(content_copy):
    edit(content_copy / "warmup_steps.md", "### Too low {#too_low}", "### Too low {#too_high}")
    with pytest.raises(ContentError, match=r"warmup_steps\.md: .*anchor 'too_high', which is not a unique slug"):
        load_all(content_copy)


def test_no_front_matter_is_refused(content_copy):
    path = content_copy / "dtype.md"
    path.write_text(path.read_text(encoding="utf-8").split("---\n", 2)[2], encoding="utf-8")
    with pytest.raises(ContentError, match=r"dtype\.md: no front matter"):
        load_all(content_copy)


def test_a_heading_inside_a_code_block_is_not_a_section(content_copy):
    edit(content_copy / "packing.md", "trainer.train()\n", "trainer.train()\n## not a section\n")
    assert "## not a section" in load_all(content_copy)["packing"].sections["Detailed configuration"]["markdown"]


def test_start_up_fails_loudly_on_a_broken_file(content_copy, monkeypatch):
    from django.apps import apps

    edit(content_copy / "r.md", "## Tuning process", "## Tuning")
    monkeypatch.setattr(content, "CONTENT_DIR", content_copy)
    with pytest.raises(ContentError, match=r"r\.md: unexpected section\(s\): Tuning"):
        apps.get_app_config("guidance").ready()
