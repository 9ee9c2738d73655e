"""In a real browser: two finished runs evaluated on the same suite, and the base model on it; the Compare page shows
each run's figure in the outcomes beside eval loss, and the two runs' outputs for the same prompts beside the base
model's, the outputs that differ from the base model's highlighted; choosing another suite (one run has it) redraws
the table. The evaluations are rows as the worker leaves them (the engine's evaluate is tested on real workers
elsewhere). Takes docs/compare-outputs.png."""
import pytest
from django.utils import timezone

from dashboard.models import Membership
from tests.factories import make_dataset, make_member, make_run, make_team, make_user
from tests.integration.conftest import wait_for
from training.models import EvalExample, EvalSuite, Evaluation, MetricPoint, Run

from .conftest import log_in

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

DECODING = {"max_new_tokens": 32, "temperature": 0.0, "top_p": 1.0, "seed": 0}
CAPITALS = [("What is the capital of France?", "Paris"), ("What is the capital of Japan?", "Tokyo"),
            ("What is the capital of Canada?", "Ottawa"), ("What is the capital of Australia?", "Canberra"),
            ("What is the capital of Brazil?", "Brasília"), ("What is the capital of Kenya?", "Nairobi")]
BASE = ["Paris is the capital of France.", "Tokyo", "Toronto", "Sydney", "Rio de Janeiro", "Nairobi"]
RANK_16 = ["Paris", "Tokyo", "Ottawa", "Canberra", "Brasília", "Nairobi"]
RANK_4 = ["Paris", "Tokyo", "Toronto", "Canberra", "Rio de Janeiro", "Nairobi"]
COLOURS = [("The colour of the sky?", "blue"), ("The colour of grass?", "green")]


def evaluated(suite: EvalSuite, run: Run | None, prompts, outputs) -> Evaluation:
    scores = [float(o.strip() == r) for o, (_, r) in zip(outputs, prompts)]
    evaluation = Evaluation.objects.create(
        team=suite.team, suite=suite, run=run, model="tiny-model", decoding=DECODING, queue="nobody",
        status=Evaluation.Status.SUCCEEDED, figures={"exact_match": sum(scores) / len(scores), "examples": len(scores)},
        examples_per_s=40.0, finished_at=timezone.now())
    EvalExample.objects.bulk_create([EvalExample(evaluation=evaluation, index=i, prompt=p, reference=r, output=o,
                                                 score=s) for i, ((p, r), o, s) in enumerate(zip(prompts, outputs,
                                                                                                 scores))])
    return evaluation


def table(page) -> dict:
    return page.evaluate("""() => {
        const t = document.getElementById('outputs-table');
        return {
          head: [...t.querySelectorAll('thead th')].map((th) => th.innerText.replace(/\\s+/g, ' ').trim()),
          rows: [...t.querySelectorAll('tbody tr')].map((tr) => ({
            prompt: tr.querySelector('.prompt').innerText,
            base: tr.querySelector('.base-output') && tr.querySelector('.base-output .text').innerText,
            runs: [...tr.querySelectorAll('td[data-run]')].map((td) => ({
              run: Number(td.dataset.run), text: td.querySelector('.text') && td.querySelector('.text').innerText,
              differs: td.classList.contains('differs'),
              background: getComputedStyle(td).backgroundColor})),
          })),
        };
    }""")


def test_compare_shows_two_runs_outputs_for_the_same_prompts_beside_the_base_model(web_server, page, tmp_path,
                                                                                  screenshot_path):
    team = make_team("Outputs team")
    user = make_member(team, role=Membership.Role.MEMBER, user=make_user("outs", password="outs-password"))
    dataset = make_dataset(team, user, tmp_dir=tmp_path, name="capitals")
    runs = [make_run(team, user, dataset, r=16, lora_alpha=32), make_run(team, user, dataset, r=4, lora_alpha=8)]
    for run, floor in zip(runs, (0.9, 1.2)):  # eval loss for the outcomes the suite's row sits beside
        MetricPoint.objects.bulk_create([
            MetricPoint(run=run, step=s, loss=floor + 2 / s, eval_loss=floor + 0.1 + 2 / s if s % 5 == 0 else None,
                        time=timezone.now()) for s in range(1, 21)])
    Run.objects.filter(id__in=[r.id for r in runs]).update(status=Run.Status.SUCCEEDED, last_step=20,
                                                           finished_at=timezone.now())
    capitals = EvalSuite.objects.create(team=team, name="capitals", path="/nowhere/capitals.jsonl",
                                        format="prompt_completion", rows=len(CAPITALS), sha256="0" * 64,
                                        metric="exact_match")
    colours = EvalSuite.objects.create(team=team, name="colours", path="/nowhere/colours.jsonl",
                                       format="prompt_completion", rows=len(COLOURS), sha256="1" * 64,
                                       metric="exact_match")
    evaluated(capitals, None, CAPITALS, BASE)
    evaluated(capitals, runs[0], CAPITALS, RANK_16)
    evaluated(capitals, runs[1], CAPITALS, RANK_4)
    evaluated(colours, runs[1], COLOURS, ["blue", "green"])

    log_in(page, web_server, "outs", "outs-password")
    page.goto(f"{web_server.url}/compare/?runs={runs[0].id},{runs[1].id}")
    # the outcomes: each run's exact match on the suite, beside eval loss
    row = page.locator(f"tr[data-outcome='suite_{capitals.id}']")
    assert row.locator("th").inner_text() == "capitals: exact match"
    assert row.locator("td").all_inner_texts() == ["1", "0.6667"]
    assert page.locator(f"tr[data-outcome='suite_{colours.id}'] td").all_inner_texts() == ["—", "1"]

    page.wait_for_selector("#outputs-table[data-loaded='1']")
    shown = table(page)
    assert shown["head"][:4] == ["#", "Prompt", "Reference", "Base model exact match 0.3333"]
    assert shown["head"][4].startswith(f"#{runs[0].id} r=16") and shown["head"][4].endswith("exact match 1")
    assert shown["head"][5].startswith(f"#{runs[1].id} r=4") and shown["head"][5].endswith("exact match 0.6667")
    assert [r["prompt"] for r in shown["rows"]] == [p for p, _ in CAPITALS]
    assert [r["base"] for r in shown["rows"]] == BASE
    for row, base, ours, theirs in zip(shown["rows"], BASE, RANK_16, RANK_4):
        assert [(c["run"], c["text"], c["differs"]) for c in row["runs"]] == [
            (runs[0].id, ours, ours != base), (runs[1].id, theirs, theirs != base)]
    # highlighted means drawn differently, not only a class
    toronto = shown["rows"][2]["runs"]
    assert toronto[0]["differs"] and not toronto[1]["differs"]
    assert toronto[0]["background"] != toronto[1]["background"]
    assert "differs from the base model's (tiny-model)" in page.inner_text("#outputs-note")
    assert page.inner_text("#outputs-range") == "1–6 of 6" and page.is_disabled("#outputs-next")

    page.locator("#params").scroll_into_view_if_needed()
    top = page.locator("#params").bounding_box()
    bottom = page.locator("#compare-outputs").bounding_box()
    page.screenshot(path=str(screenshot_path("compare-outputs.png")), full_page=True,
                    clip={"x": 0, "y": page.evaluate("window.scrollY") + top["y"] - 60, "width": 1440,
                          "height": bottom["y"] + bottom["height"] - top["y"] + 80})

    # another suite: only the second run has it, no base model; the first run's column says so
    page.select_option("#outputs-suite", str(colours.id))
    page.wait_for_selector("#outputs-table[data-loaded='2']")
    shown = table(page)
    assert len(shown["head"]) == 5 and [r["prompt"] for r in shown["rows"]] == [p for p, _ in COLOURS]
    assert [[c["text"] for c in r["runs"]] for r in shown["rows"]] == [[None, "blue"], [None, "green"]]
    assert "not evaluated" in page.inner_text(f"#outputs-table td[data-run='{runs[0].id}']")
    wait_for(lambda: not page.js_errors, timeout=1, what="no script error")
    assert page.js_errors == []
