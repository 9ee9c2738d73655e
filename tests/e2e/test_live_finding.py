"""In a real browser: a run made to misbehave (a learning rate of 1e-12) raises its flat-loss finding live on the
run page, with a link to the guidance it implicates, and the run list open beside it follows the run's status,
progress and findings count without a reload."""
import pytest
from django.conf import settings

from guidance.models import Finding
from tests.factories import idle_queue, make_dataset, make_member, make_team, make_user, tiny_overrides
from training import tasks
from training.runs import services

from .conftest import log_in

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_a_flat_run_raises_its_finding_live_on_the_run_page(web_server, celery_worker, tiny_model, page, tmp_path,
                                                            screenshot_path):
    team = make_team()
    user = make_member(team, user=make_user("watcher", password="watcher-password"))
    dataset = make_dataset(team, user, tmp_dir=tmp_path, name="colours")
    # Queued where no worker looks, so the page is open and live before the worker takes it.
    run = services.run_create(team=team, user=user, dataset=dataset, queue=idle_queue(), name="frozen lr",
                              overrides=tiny_overrides(tiny_model, learning_rate=1e-12, max_steps=40, warmup_steps=2))
    log_in(page, web_server, "watcher", "watcher-password")
    # The run list in a second tab: its row records every status it shows.
    listing = page.context.new_page()
    listing_errors: list[str] = []
    listing.on("pageerror", lambda error: listing_errors.append(str(error)))
    listing.goto(f"{web_server.url}/runs/")
    listing.wait_for_function("document.getElementById('live-state').dataset.state === 'live'")
    row = listing.locator(f"tr[data-run='{run.id}']")
    assert row.locator(".col-status").inner_text().split() == ["Queued", "#1", "in", "queue"]
    assert row.locator(".col-findings").inner_text() == "0"
    listing.evaluate("""(id) => {
      window.notReloaded = true;
      window.statuses = [];
      const cell = document.querySelector(`tr[data-run="${id}"] .col-status`);
      new MutationObserver(() => window.statuses.push(cell.querySelector('.status').textContent))
        .observe(cell, { childList: true, subtree: true });
    }""", run.id)
    page.goto(f"{web_server.url}/runs/{run.id}/")
    page.wait_for_function("document.getElementById('live-state').dataset.state === 'live'")
    assert page.inner_text("#findings-count") == "0"
    page.evaluate("window.notReloaded = true")

    tasks.run_train.apply_async(args=[run.id], queue=settings.TUNEBOARD_DEFAULT_QUEUE)
    finding = page.locator('#findings [data-finding="flat_loss@22"]')
    finding.wait_for(timeout=120_000)
    seen_at = int(page.evaluate("document.getElementById('chart-loss').data[0].x.length"))
    assert page.evaluate("window.notReloaded") is True  # it came over the websocket, not a reload
    assert page.inner_text("#findings-count") == "1"
    assert "Loss is flat" in finding.inner_text() and "learning rate" in finding.inner_text().lower()
    assert finding.locator("a[href='/guidance/learning_rate/#impact_and_symptoms']").count() == 1
    assert Finding.objects.filter(run=run, code="flat_loss", step=22).count() == 1
    if page.inner_text("#run-status") == "Running":
        assert seen_at < 40  # raised while the run was still training
    page.locator("#findings").scroll_into_view_if_needed()
    page.screenshot(path=str(screenshot_path("finding-live.png")))

    page.wait_for_function("document.getElementById('live-state').dataset.state === 'ended'", timeout=120_000)
    # The run list, never reloaded, went through the run's life and counts its finding.
    listing.wait_for_function(f"document.querySelector('tr[data-run=\"{run.id}\"] .status').textContent === 'Succeeded'",
                              timeout=30_000)
    assert listing.evaluate("window.notReloaded") is True
    statuses = listing.evaluate("window.statuses")
    assert "Running" in statuses and statuses[-1] == "Succeeded", statuses
    assert row.locator(".col-findings .badge.warn").inner_text() == "1"
    assert row.locator(".col-progress").inner_text().strip() == "40/40"
    assert row.locator(".queue-position").count() == 0
    listing.screenshot(path=str(screenshot_path("run-list-live.png")))
    assert page.js_errors == [] and listing_errors == []
