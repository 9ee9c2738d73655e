"""In a real browser: the guidance calculators compute what guidance/calculators.py does, the run form's derived
values follow r, lora_alpha and rsLoRA, and a field's guidance opens beside the form without leaving it."""
import itertools

import pytest

from guidance import calculators, content
from tests.factories import make_dataset, make_member, make_team, make_user

from .conftest import log_in, unfold

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

def python_results(cases: list[dict]) -> list:
    def attempt(fn):
        try:
            return fn()
        except ValueError:
            return "error"

    out = []
    for c in cases:
        plan = attempt(lambda: calculators.step_plan(num_examples=c["rows"], micro_batch=c["micro"],
                                                     grad_accum=c["accum"], epochs=c["epochs"],
                                                     max_steps=c["max_steps"]).as_dict())
        out.append({
            "plan": plan,
            "warmup": attempt(lambda: calculators.recommended_warmup_steps(c["total"], ratio=c["ratio"],
                                                                           floor=c["floor"])),
            "alpha": attempt(lambda: calculators.alpha_for_gain(c["gain"], c["r"], use_rslora=c["rslora"])),
            "switch": attempt(lambda: calculators.alpha_after_rslora_switch(c["alpha"], c["r"], to_rslora=c["rslora"])),
            "gain": attempt(lambda: calculators.lora_gain(c["alpha"], c["r"], use_rslora=c["rslora"])),
            "accum": attempt(lambda: calculators.grad_accum_for_target(c["micro"], target_effective_batch=c["target"])),
            "rank": attempt(lambda: list(calculators.rank_range(c["rows"]))),
        })
    return out


def test_calculators_js_computes_what_calculators_py_does(web_server, page):
    page.goto(f"{web_server.url}/accounts/login/")
    rows = [0, 1, 230, 499, 500, 1999, 2000, 9999, 10000, 49999, 50000, 199999, 200000, 1234567]
    cases = [dict(rows=rows[i % len(rows)], micro=micro, accum=accum, epochs=epochs, max_steps=max_steps, total=total,
                  ratio=ratio, floor=floor, gain=gain, r=r, alpha=alpha, rslora=rslora, target=target)
             for i, (micro, accum, epochs, max_steps, total, ratio, floor, gain, r, alpha, rslora, target)
             in enumerate(itertools.islice(itertools.product(
                 [1, 2, 3, 0], [1, 4, 16], [1.0, 2.5], [None, 40], [1, 9, 50, 83, 300, 499, 500, 1000, 4321],
                 [0.03, 0.05, 0.1, 0.0, 1.5], [10, 25, 9], [0.5, 1.0, 2.0, 2.5], [1, 8, 16, 64, 0],
                 [8, 16, 32, 16.5], [False, True], [16, 32, 7]), 0, None, 137))]
    computed = page.evaluate("""async (cases) => {
        const c = await import('/static/js/calculators.js');
        const attempt = (fn) => { try { return fn(); } catch (error) { return "error"; } };
        return cases.map((x) => ({
            plan: attempt(() => c.stepPlan({numExamples: x.rows, microBatch: x.micro, gradAccum: x.accum,
                                            epochs: x.epochs, maxSteps: x.max_steps})),
            warmup: attempt(() => c.recommendedWarmupSteps(x.total, x.ratio, x.floor)),
            alpha: attempt(() => c.alphaForGain(x.gain, x.r, x.rslora)),
            switch: attempt(() => c.alphaAfterRsloraSwitch(x.alpha, x.r, x.rslora)),
            gain: attempt(() => c.loraGain(x.alpha, x.r, x.rslora)),
            accum: attempt(() => c.gradAccumForTarget(x.micro, x.target)),
            rank: attempt(() => c.rankRange(x.rows)),
        }));
    }""", cases)
    expected = python_results(cases)
    assert len(computed) == len(cases) > 100
    for case, js, py in zip(cases, computed, expected):
        if isinstance(py["gain"], float):
            assert js["gain"] == pytest.approx(py["gain"], rel=1e-12), case
            js["gain"] = py["gain"]
        assert js == py, case
    # The seed's floors: a 300-step run warms up 10 steps (3% would be 9); 1000 steps get 30.
    warmups = {(c["total"], c["ratio"], c["floor"]): py["warmup"] for c, py in zip(cases, expected)}
    assert warmups.get((300, 0.03, 10), 10) == 10
    assert any(py["warmup"] == "error" for py in expected) and any(py["plan"] == "error" for py in expected)


def test_a_guidance_page_computes_the_gain_matched_alpha_as_the_user_types(web_server, page, screenshot_path):
    make_user("reader", password="reader-password")
    log_in(page, web_server, "reader", "reader-password")
    page.goto(f"{web_server.url}/guidance/lora_alpha/")
    assert page.locator("section.guidance-section").count() == 6
    out = page.locator("#calc-gain_alpha output")
    assert "gain 2 (32 / 16)" in out.inner_text() and "rsLoRA on: lora_alpha = 8" in out.inner_text()
    page.check("#calc-gain_alpha [name=use_rslora]")
    page.fill("#calc-gain_alpha [name=r]", "64")
    page.fill("#calc-gain_alpha [name=gain]", "2")
    text = out.inner_text()
    assert "gain 4 (32 / √64)" in text and "rsLoRA off: lora_alpha = 256" in text  # g·r = 4 × 64
    assert calculators.alpha_after_rslora_switch(32, 64, to_rslora=False) == 256
    assert f"lora_alpha = {calculators.alpha_for_gain(2, 64, use_rslora=True)}" in text  # 16
    page.screenshot(path=str(screenshot_path("guidance-page.png")))
    page.fill("#calc-gain_alpha [name=r]", "0")
    assert "r must be a whole number of at least 1" in out.inner_text()
    page.goto(f"{web_server.url}/guidance/warmup_steps/")
    page.fill("#calc-warmup [name=total_steps]", "300")
    assert page.inner_text("#calc-warmup output") == "warmup_steps = 10"
    page.fill("#calc-warmup [name=total_steps]", "2000")
    assert page.inner_text("#calc-warmup output") == "warmup_steps = 60"
    assert page.js_errors == []


def test_the_run_form_follows_r_alpha_and_rslora_and_opens_guidance_beside_it(web_server, page, tmp_path,
                                                                          screenshot_path):
    team = make_team()
    user = make_member(team, user=make_user("tuner", password="tuner-password"))
    dataset = make_dataset(team, user, rows=230, tmp_dir=tmp_path, name="two hundred thirty")
    log_in(page, web_server, "tuner", "tuner-password")
    page.goto(f"{web_server.url}/runs/new/")
    page.select_option("#id_dataset", str(dataset.id))

    def shown(name):
        return page.inner_text(f"#derived-{name}")

    # Each field says what it is and its recommended value.
    lora_alpha = page.locator("[data-field=lora_alpha]")
    assert content.get("lora_alpha").one_line in lora_alpha.inner_text()
    assert "Recommended: 32" in lora_alpha.inner_text()

    assert shown("lora_scale") == "2" and shown("effective_batch") == "8" and shown("total_steps") == "29"
    page.fill("#id_r", "64")
    page.fill("#id_lora_alpha", "64")
    assert shown("lora_scale") == "1" and page.inner_text("#derived-lora_scale-formula") == "= 64 / 64"
    unfold(page, "use_rslora", "gradient_accumulation_steps")
    page.select_option("#id_use_rslora", "true")
    assert shown("lora_scale") == "8" and page.inner_text("#derived-lora_scale-formula") == "= 64 / √64 (rsLoRA)"
    page.fill("#id_lora_alpha", "16")
    assert shown("lora_scale") == "2"
    page.select_option("#id_use_rslora", "false")
    assert shown("lora_scale") == "0.25"
    page.fill("#id_gradient_accumulation_steps", "2")
    page.fill("#id_warmup_steps", "0.1")
    assert shown("effective_batch") == "4" and shown("total_steps") == "58" and shown("warmup_steps") == "6"

    # The guidance opens in a panel beside the form: same page, the typing kept.
    form_url = page.url
    page.click("[data-field=lora_alpha] a[data-guide]")
    panel = page.locator("#guidance-panel")
    panel.locator("#guidance-article").wait_for()
    assert page.url == form_url and panel.get_attribute("data-param") == "lora_alpha"
    assert panel.locator("section.guidance-section").count() == 6
    assert "alpha / √r" in panel.inner_text() and panel.locator("#too_high").count() == 1
    assert page.input_value("#id_lora_alpha") == "16" and page.input_value("#id_r") == "64"
    page.screenshot(path=str(screenshot_path("guidance-panel.png")))
    page.click("#guidance-panel-close")
    assert panel.is_hidden()
    page.click("[data-field=warmup_steps] a[data-guide]")
    page.wait_for_function("document.getElementById('guidance-panel').dataset.param === 'warmup_steps'")
    assert "warmup" in panel.locator("h1").inner_text()
    assert page.js_errors == []
