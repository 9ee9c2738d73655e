"""In a real browser: the New run page's derived values follow the user's typing, with the same formulas as the
engine (static/js/derived.js checked against training/engine/derived.py)."""
import itertools
import json

import pytest

from tests.factories import make_dataset, make_member, make_preset, make_team, make_user
from training.engine import derived

from .conftest import log_in, unfold

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_derived_js_computes_what_derived_py_does(web_server, page):
    page.goto(f"{web_server.url}/accounts/login/")
    cases = [dict(rows=rows, micro=micro, accum=accum, epochs=epochs, max_steps=max_steps, warmup=warmup, r=r,
                  alpha=alpha, rslora=rslora)
             for rows, micro, accum, epochs, max_steps, warmup, r, alpha, rslora in itertools.islice(itertools.product(
                 [0, 1, 7, 230, 1000, 12345], [1, 2, 8], [1, 3, 16], [1.0, 0.5, 2.5], [None, 40],
                 [0, 10, 0.03, 0.5], [1, 8, 16, 64], [8, 32, 16.5], [False, True]), 0, None, 97)]
    computed = page.evaluate("""async (cases) => {
        const d = await import('/static/js/derived.js');
        return cases.map((c) => {
            const total = d.totalSteps(c.rows, c.micro, c.accum, c.epochs, c.max_steps);
            return {
                effective_batch: d.effectiveBatch(c.micro, c.accum),
                steps_per_epoch: d.stepsPerEpoch(c.rows, c.micro, c.accum),
                total_steps: total,
                warmup_steps: d.warmupStepsResolved({value: c.warmup, isRatio: !Number.isInteger(c.warmup)}, total),
                lora_scale: d.loraScale(c.alpha, c.r, c.rslora),
            };
        });
    }""", cases)
    assert len(computed) == len(cases) > 50
    for case, js in zip(cases, computed):
        total = derived.total_steps(case["rows"], case["micro"], case["accum"], case["epochs"], case["max_steps"])
        expected = {
            "effective_batch": derived.effective_batch(case["micro"], case["accum"]),
            "steps_per_epoch": derived.steps_per_epoch(case["rows"], case["micro"], case["accum"]),
            "total_steps": total,
            "warmup_steps": derived.warmup_steps_resolved(case["warmup"], total),
            "lora_scale": pytest.approx(derived.lora_scale(case["alpha"], case["r"], case["rslora"]), rel=1e-12),
        }
        assert js == expected, json.dumps(case)


def test_derived_values_follow_the_typing(web_server, page, tmp_path):
    team = make_team()
    user = make_member(team, user=make_user("former", password="former-password"))
    dataset = make_dataset(team, user, rows=230, tmp_dir=tmp_path, name="two hundred thirty")
    preset = make_preset(team, name="rank 8", model="m", r=8, lora_alpha=16, per_device_train_batch_size=4)
    log_in(page, web_server, "former", "former-password")
    page.goto(f"{web_server.url}/runs/new/")
    page.select_option("#id_dataset", str(dataset.id))

    def shown(name):
        return page.inner_text(f"#derived-{name}")

    # Engine defaults: micro-batch 2 x accumulation 4, r 16, alpha 32, one epoch of 230 rows, warmup 3%.
    assert shown("effective_batch") == "8" and shown("lora_scale") == "2"
    assert shown("total_steps") == "29" and shown("warmup_steps") == "1"

    page.fill("#id_r", "64")
    assert shown("lora_scale") == "0.5"
    unfold(page, "use_rslora", "gradient_accumulation_steps")
    page.select_option("#id_use_rslora", "true")
    assert shown("lora_scale") == "4"  # 32 / sqrt(64)
    page.fill("#id_lora_alpha", "16")
    assert shown("lora_scale") == "2" and "√64" in page.inner_text("#derived-lora_scale-formula")
    page.select_option("#id_use_rslora", "false")
    assert shown("lora_scale") == "0.25"

    page.fill("#id_gradient_accumulation_steps", "1")
    page.fill("#id_eval_split", "0.1")
    assert shown("effective_batch") == "2" and shown("train_rows") == "207" and shown("total_steps") == "104"
    page.fill("#id_warmup_steps", "10")
    assert shown("warmup_steps") == "10"
    page.fill("#id_max_steps", "300")
    assert shown("total_steps") == "300"
    page.fill("#id_warmup_steps", "0.1")
    assert shown("warmup_steps") == "30"
    page.fill("#id_r", "sixteen")
    assert shown("lora_scale") == "—"

    # A preset's values stand where the user typed nothing: its r 8 and micro-batch 4.
    page.fill("#id_r", "")
    page.fill("#id_lora_alpha", "")
    unfold(page, "preset")
    page.select_option("#id_preset", str(preset.id))
    assert shown("lora_scale") == "2" and shown("effective_batch") == "4"
    assert "preset" in page.inner_text("[data-effective-for=r]") and page.get_attribute("#id_r", "placeholder") == "8"
    assert page.js_errors == []


def test_an_out_of_range_value_shows_its_note_and_the_fix_puts_the_seeds_value_back(web_server, page, tmp_path):
    team = make_team()
    user = make_member(team, user=make_user("pilot", password="pilot-password"))
    make_dataset(team, user, rows=64, tmp_dir=tmp_path, name="sixty four")
    log_in(page, web_server, "pilot", "pilot-password")
    page.goto(f"{web_server.url}/runs/new/")
    lr_note = '#preflight-notes [data-note="learning_rate_off"]'
    page.wait_for_selector("#preflight-notes [data-note]")  # the defaults' own notes (r for 64 rows)
    assert page.locator(lr_note).count() == 0

    page.fill("#id_learning_rate", "0.3")
    page.wait_for_selector(lr_note)
    note = page.locator(lr_note)
    assert "1,500x above the LoRA default" in note.inner_text()
    link = note.locator("a[data-guide]")
    assert link.get_attribute("href") == "/guidance/learning_rate/#too_high"
    # The lr x weight_decay combination is named too, with the other parameter.
    assert "learning_rate" in page.inner_text('#preflight-notes [data-note="weight_decay_heavy_for_learning_rate"]')

    link.click()  # the guidance opens beside the form, the form keeps its typing
    page.wait_for_selector("#guidance-panel:not([hidden]) #guidance-article")
    assert page.input_value("#id_learning_rate") == "0.3"
    page.locator("#id_learning_rate").scroll_into_view_if_needed()
    page.screenshot(path=str(tmp_path / "preflight.png"))
    page.click("#guidance-panel-close")

    note.locator("button.fix").click()
    assert page.input_value("#id_learning_rate") == "0.0002"
    page.wait_for_selector(lr_note, state="detached")
    assert page.locator('#preflight-notes [data-note="weight_decay_heavy_for_learning_rate"]').count() == 0
    assert page.js_errors == []
