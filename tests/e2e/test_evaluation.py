"""In a real browser: upload a classification eval suite on the Eval suites page (the label set appears once
classification is chosen), start a tiny run from the New run form that evaluates on it at its end, and see on the
run page the suite's figures and the examples it got wrong with their outputs; evaluate it again beside the base
model and see the base model's outputs next to the run's. Takes docs/evaluation.png."""
import json
import re

import pytest
from django.conf import settings

from tests.factories import make_dataset, make_member, make_preset, make_team, make_user, tiny_overrides
from tests.integration.conftest import wait_for
from tests.workers import start_worker, stop_worker
from training.engine.tiny import COLOURS, synthetic_pairs
from training.models import EvalSuite, Evaluation, Run

from .conftest import log_in, unfold

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(600)]

ROWS = 8


@pytest.fixture
def cpu_worker(tmp_path):
    """A succeeded run's evaluations at its end are created by a task on the cpu queue."""
    worker = start_worker(queue=settings.TUNEBOARD_CPU_QUEUE, name=f"cpu-eval-{tmp_path.name}@test",
                          log=tmp_path / "cpu-worker.log")
    yield worker
    stop_worker(worker)


def suite_file(tmp_path):
    """Chats asking a thing's colour once, the colour (with its full stop) as the reference."""
    path = tmp_path / "colours-suite.jsonl"
    rows = [{"messages": [{"role": "user", "content": prompt.replace(f"Say it {answer.count(' ') + 1} times.",
                                                                     "Say it 1 times.")},
                          {"role": "assistant", "content": answer.split(" ")[0].rstrip(".") + "."}]}
            for prompt, answer in synthetic_pairs(ROWS, seed=7)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def evaluation_item(page, evaluation: Evaluation):
    return page.locator(f'#evaluation li.evaluation[data-evaluation="{evaluation.id}"]')


def test_a_run_evaluated_at_its_end_shows_its_figures_and_what_it_got_wrong(
        web_server, celery_worker, cpu_worker, tiny_model, page, screenshot_path, tmp_path):
    team = make_team("Eval team")
    user = make_member(team, user=make_user("evaluator", password="evaluator-password"))
    dataset = make_dataset(team, user, rows=64, tmp_dir=tmp_path, name="colours")
    preset = make_preset(team, name="tiny, 10 steps", **tiny_overrides(tiny_model, max_steps=10))
    log_in(page, web_server, "evaluator", "evaluator-password")

    # The suite: the label set is asked for only once classification is chosen.
    page.click("nav >> text=Eval suites")
    page.wait_for_url(re.compile(r"/evaluation/suites/$"))
    assert page.locator("#suite-form [data-field=labels]").is_hidden()
    page.fill("#id_name", "colour of things")
    page.set_input_files("#id_file", str(suite_file(tmp_path)))
    page.check("#suite-form input[name=metric][value=classification]")
    assert page.locator("#suite-form [data-field=labels]").is_visible()
    page.fill("#id_labels", ", ".join(COLOURS))
    page.fill("#id_max_new_tokens", "4")
    page.click("#suite-form button[type=submit]")
    page.wait_for_url(re.compile(r"/evaluation/suites/\d+/$"))
    suite = EvalSuite.objects.get(name="colour of things")
    assert (suite.rows, suite.format, suite.metric, suite.labels) == (ROWS, "messages", "classification", COLOURS)
    assert page.locator("#suite-examples tbody tr").count() == ROWS
    assert "user: What colour is the" in page.inner_text("#suite-examples")
    page.click("nav >> text=Eval suites")
    assert page.locator(f'#suites tr[data-suite="{suite.id}"]').count() == 1
    page.screenshot(path=str(screenshot_path("evaluation-suites.png")))

    # The run: evaluated on the suite at its end.
    page.click("nav >> text=New run")
    page.select_option("#id_dataset", str(dataset.id))
    unfold(page, "preset", "name", "eval_suites")
    page.select_option("#id_preset", str(preset.id))
    page.fill("#id_name", "evaluated at its end")
    page.select_option("#id_eval_suites", [str(suite.id)])
    page.click("#run-form button[type=submit]")
    page.wait_for_url(re.compile(r"/runs/\d+/$"))
    run = Run.objects.get(name="evaluated at its end")
    assert list(run.eval_suites.all()) == [suite]
    assert "At its end the run is evaluated on colour of things" in page.inner_text("#evaluation")

    # Without a reload: the run succeeds, the cpu worker queues the evaluation, the gpu worker runs it.
    wait_for(lambda: page.inner_text("#run-status") == "Succeeded", timeout=240, what="the run to succeed")
    wait_for(lambda: page.locator("#evaluation li.evaluation[data-status=succeeded]").count() == 1, timeout=180,
             what="the evaluation's figures on the page")
    evaluation = Evaluation.objects.get(run=run)
    assert (evaluation.status, evaluation.checkpoint_step, evaluation.adapters) == ("succeeded", None, "on")
    item = evaluation_item(page, evaluation)
    head = item.locator(".evaluation-head").first.inner_text()
    assert "colour of things" in head and "final" in head and "Succeeded" in head
    for figure in ("accuracy", "macro_f1", "minority_recall", "examples_per_s"):
        assert item.locator(f'.evaluation-head [data-figure="{figure}"]').count() == 1, figure
    assert f"{ROWS} examples" in head
    wrong = evaluation.examples.filter(score__lt=1).order_by("index")
    assert wrong.exists(), "ten steps of a random tiny model got every colour right"
    item.locator("details.wrong-examples summary").click()
    first = wrong.first()
    row = item.locator(f'tr[data-example="{first.index}"]')
    assert first.prompt.splitlines()[0] in row.inner_text() and first.reference in row.inner_text()
    assert f"predicted: {first.label}" in row.locator("td.output").inner_text()
    if first.output.strip():
        assert first.output.strip() in row.locator("td.output").inner_text()

    # Again, beside the base model: its outputs sit next to the run's for the same prompts.
    page.select_option("#id_suite", str(suite.id))
    page.select_option("#id_checkpoint", "final")
    page.check("#id_base")
    page.click("#evaluate-form button[type=submit]")
    page.wait_for_url(re.compile(rf"/runs/{run.id}/#evaluation$"))
    assert "queued" in page.inner_text(".messages")
    again = Evaluation.objects.filter(run=run).order_by("-id").first()
    base = Evaluation.objects.get(run__isnull=True, suite=suite)
    assert again.id != evaluation.id and base.model == run.config["model"] and base.queue == run.queue
    try:
        wait_for(lambda: evaluation_item(page, again).get_attribute("data-status") == "succeeded"
                 and evaluation_item(page, again).locator(f'[data-base="{base.id}"] [data-figure="accuracy"]').count(),
                 timeout=240, what="the run's and the base model's figures")
    except AssertionError:
        rows = list(Evaluation.objects.values("id", "run_id", "status", "figures", "decoding", "error"))
        raise AssertionError(f"{rows}\n{page.inner_html('#evaluation')[:4000]}\n{page.js_errors}") from None
    item = evaluation_item(page, again)
    item.locator("details.wrong-examples summary").click()
    base_first = base.examples.get(index=int(item.locator("tr[data-example]").first.get_attribute("data-example")))
    assert f"predicted: {base_first.label}" in item.locator("tr[data-example] td.base-output").first.inner_text()
    item.scroll_into_view_if_needed()
    page.locator("#evaluation").screenshot(path=str(screenshot_path("evaluation.png")))
    assert page.js_errors == []
