"""The guidance pages: an index of the 15 parameters, one page per parameter with its six sections and calculators,
and a 404 for anything that is not a known parameter."""
import pytest
from django.utils.html import escape

from guidance import content

pytestmark = pytest.mark.django_db

SEED_PARAMS = [
    "dtype", "load_in_4bit", "r", "lora_alpha", "lora_dropout", "bias", "use_rslora", "loftq_config",
    "packing", "gradient_accumulation_steps", "warmup_steps", "learning_rate", "optim", "weight_decay",
    "lr_scheduler_type",
]


def test_the_index_lists_the_fifteen_parameters_with_their_defaults(member_client):
    response = member_client.get("/guidance/")
    assert response.status_code == 200
    html = response.content.decode()
    for param in SEED_PARAMS:
        assert f'<tr data-param="{param}">' in html
        assert f'href="/guidance/{param}/"' in html
    assert html.count("<tr data-param=") == 15
    assert "2 × r (r = 16 → 32)" in html  # lora_alpha's simple default note


@pytest.mark.parametrize("param", SEED_PARAMS)
def test_each_parameter_page_renders_all_six_sections(member_client, param):
    response = member_client.get(f"/guidance/{param}/")
    assert response.status_code == 200
    html = response.content.decode()
    guidance = content.get(param)
    for name in content.SECTIONS:
        assert f'data-section="{name}"' in html
        assert f'id="{content.SECTION_ANCHORS[name]}"' in html
    assert escape(guidance.one_line) in html
    assert guidance.sections["Sources"]["html"] in html


def test_the_numeric_pages_keep_their_too_high_and_too_low_anchors(member_client):
    html = member_client.get("/guidance/learning_rate/").content.decode()
    assert 'id="too_high"' in html and 'id="too_low"' in html


@pytest.mark.parametrize("param, calculator", [
    ("gradient_accumulation_steps", "step_plan"), ("gradient_accumulation_steps", "grad_accum"),
    ("warmup_steps", "warmup"), ("lora_alpha", "gain_alpha"), ("use_rslora", "gain_alpha"), ("r", "rank_range"),
])
def test_pages_with_a_seed_formula_carry_its_calculator(member_client, param, calculator):
    html = member_client.get(f"/guidance/{param}/").content.decode()
    assert f'data-calculator="{calculator}"' in html and "js/guidance.js" in html


def test_a_page_without_a_formula_has_no_calculator(member_client):
    html = member_client.get("/guidance/optim/").content.decode()
    assert "data-calculator=" not in html and "js/guidance.js" not in html


@pytest.mark.parametrize("slug", ["nope", "model", "max_steps", "Learning_Rate", "learning-rate", "r%2F..", "..%2Fr",
                                  "r.md", "%20r"])
def test_an_unknown_or_bad_slug_is_a_404(member_client, slug):
    assert member_client.get(f"/guidance/{slug}/").status_code == 404


def test_guidance_needs_a_login(client):
    response = client.get("/guidance/r/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_the_guidance_page_has_a_glossary_that_the_pages_hover_terms_link_to(world, member_client):
    from guidance.glossary import TERMS

    html = member_client.get("/guidance/").content.decode()
    glossary = html[html.index('id="glossary"'):]
    for term in ("pre-flight", "findings", "fit planner", "uncalibrated", "effective batch", "lora scale"):
        assert f'id="term-{term.replace(" ", "-")}"' in glossary
    assert "2×4 and 8×1" in glossary
    runs = member_client.get("/runs/").content.decode()
    assert (f'<a class="term" href="/guidance/#term-pre-flight" title="{escape(TERMS["pre-flight"])}">Pre-flight</a>'
            in runs)
