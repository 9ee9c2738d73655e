"""In a real browser, with the real worker: going on from a run. A flat run's finding offers an Apply live; when the run
ends its page shows the Playground button and offers the final adapter to evaluate, without a reload; the Apply opens
the New run form with the change made and said at the top, and the run it starts links its parent. On the form, a
learning rate of 3 is marked at its field as it is typed, and a refused submit lists it at the top with a link."""
import io

import pytest
from django.conf import settings

from tests.factories import idle_queue, make_dataset, make_member, make_team, make_user, tiny_overrides
from training import tasks
from training.evaluation import services as evaluation_services
from training.models import Run
from training.runs import services

from .conftest import log_in

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_a_findings_apply_starts_the_next_run_and_the_page_follows_the_runs_end(
        web_server, celery_worker, tiny_model, page, tmp_path, screenshot_path):
    team = make_team()
    user = make_member(team, user=make_user("iterator", password="iterator-password"))
    dataset = make_dataset(team, user, tmp_dir=tmp_path, name="colours")
    evaluation_services.suite_create_from_upload(
        team=team, user=user, name="sums", file=io.BytesIO(b'{"prompt": "2+2=", "reference": "4"}\n'),
        metric="exact_match", filename="suite.jsonl")
    # Queued where no worker looks, so the page is open and live before the worker takes it.
    run = services.run_create(team=team, user=user, dataset=dataset, queue=idle_queue(), name="frozen lr",
                              overrides=tiny_overrides(tiny_model, learning_rate=1e-12, max_steps=40, warmup_steps=2,
                                                       save_steps=20))
    log_in(page, web_server, "iterator", "iterator-password")
    page.goto(f"{web_server.url}/runs/{run.id}/")
    page.wait_for_function("document.getElementById('live-state').dataset.state === 'live'")
    assert page.locator("#playground-link").count() == 0 and page.locator("#sweep-from-run").count() == 0
    page.evaluate("window.notReloaded = true")

    tasks.run_train.apply_async(args=[run.id], queue=settings.TUNEBOARD_DEFAULT_QUEUE)
    apply = page.locator('#findings [data-finding="flat_loss@22"] a[data-apply=finding]')
    apply.wait_for(timeout=120_000)
    assert apply.inner_text() == "Apply: a new run with learning_rate 1e-12 → 0.0002"

    # The run's end, followed without a reload: the status, the Playground and Sweep buttons, the final adapter
    # first (and chosen) in the Evaluate form, the time it took.
    page.wait_for_function("document.getElementById('live-state').dataset.state === 'ended'", timeout=120_000)
    page.locator("#playground-link").wait_for(timeout=10_000)
    assert page.inner_text("#run-status") == "Succeeded"
    assert page.locator("#sweep-from-run").is_visible()
    page.wait_for_function(
        "document.querySelector('#evaluate-form select[name=checkpoint]')?.value === 'final'", timeout=15_000)
    assert page.locator("#evaluate-form select[name=checkpoint] option").all_inner_texts()[0] == "final adapter"
    assert page.inner_text("#run-elapsed").startswith("took ")
    assert page.evaluate("window.notReloaded") is True
    page.screenshot(path=str(screenshot_path("run-ended-actions.png")))

    apply.click()
    page.wait_for_url(f"**/runs/new/?from={run.id}&finding=*")
    assert page.inner_text("#applied-change").startswith(
        "Applied: learning_rate 1e-12 → 0.0002, from the finding at step 22 (Loss is flat")
    assert page.input_value("#id_learning_rate") == "0.0002"
    assert "applied" in page.get_attribute("#field-learning_rate", "class")
    # The rest of its config is the parent's, the fields it set apart from the defaults marked.
    assert page.input_value("#id_max_steps") == "40" and "from-parent" in page.get_attribute("#field-max_steps", "class")
    assert page.input_value("#id_model") == tiny_model
    assert page.input_value("#id_dataset") == str(dataset.id)
    page.locator("#applied-change").scroll_into_view_if_needed()
    page.screenshot(path=str(screenshot_path("run-new-applied.png")))
    page.fill("#id_max_steps", "4")
    page.click("#run-form button[type=submit]")
    page.wait_for_url("**/runs/*/")
    child = Run.objects.exclude(id=run.id).get(team=team)
    services.run_stop(run=child, user=user)  # the session's worker must not still train it when the test ends
    assert child.parent_id == run.id and child.config["learning_rate"] == 2e-4 and child.config["max_steps"] == 4
    assert child.config["save_steps"] == 20  # the parent's config, not the defaults
    assert page.inner_text("#parent-link").startswith(f"Started from run #{run.id} frozen lr")
    compare = page.locator("#compare-parent")
    assert compare.get_attribute("href") == f"/compare/?runs={run.id},{child.id}"
    page.screenshot(path=str(screenshot_path("run-parent-link.png")))
    compare.click()
    page.wait_for_url("**/compare/?runs=*")
    assert page.locator(f"a[href='/runs/{run.id}/']").count() >= 1
    assert page.locator(f"a[href='/runs/{child.id}/']").count() >= 1
    assert page.js_errors == []


def test_a_learning_rate_of_3_is_marked_as_typed_and_listed_at_the_top_on_submit(
        web_server, tiny_model, page, tmp_path, screenshot_path):
    team = make_team()
    user = make_member(team, user=make_user("newcomer", password="newcomer-password"))
    dataset = make_dataset(team, user, tmp_dir=tmp_path, name="colours")
    log_in(page, web_server, "newcomer", "newcomer-password")
    page.goto(f"{web_server.url}/runs/new/")
    page.select_option("#id_dataset", str(dataset.id))
    page.fill("#id_model", tiny_model)
    page.fill("#id_learning_rate", "3")
    error = page.locator("[data-live-error-for=learning_rate]")
    error.wait_for(state="visible", timeout=15_000)
    assert error.inner_text() == "3 is above 1: at most 1; the recommended value is 0.0002"
    assert "has-error" in page.get_attribute("#field-learning_rate", "class")
    # The review lists the refusal first and never calls the config clean.
    first = page.locator("#preflight-notes li").first
    assert first.get_attribute("data-error") == "learning_rate"
    assert "Nothing to question" not in page.inner_text("#preflight")
    assert "refuses" in page.inner_text("#preflight-status")
    page.locator("#field-learning_rate").scroll_into_view_if_needed()
    page.screenshot(path=str(screenshot_path("run-new-live-error.png")))

    with page.expect_navigation():
        page.click("#run-form button[type=submit]")
    summary = page.locator("#error-summary")
    assert summary.is_visible()
    assert "learning_rate: 3 is above 1: at most 1; the recommended value is 0.0002" in summary.inner_text()
    assert page.evaluate("document.getElementById('error-summary').getBoundingClientRect().top") < 400
    page.locator("#preflight-notes li[data-error=learning_rate]").wait_for()  # the live check, again on this page
    page.screenshot(path=str(screenshot_path("run-new-error-summary.png")))
    summary.locator("a[href='#field-learning_rate']").click()
    page.wait_for_function("""() => {
      const box = document.getElementById('field-learning_rate').getBoundingClientRect();
      return box.bottom > 0 && box.top < window.innerHeight;
    }""", timeout=5_000)
    assert page.evaluate("window.location.hash") == "#field-learning_rate"
    assert Run.objects.filter(team=team).count() == 0
    assert page.js_errors == []
