"""In a real browser: log in, start the demo run from the New run page, watch the loss chart gain points live,
survive a server restart with no gap and no duplicate, and take the README's screenshot."""
import re
from pathlib import Path

import pytest

from dashboard.dev import demo_preset_config
from dashboard.models import Membership
from tests.factories import make_dataset, make_member, make_preset, make_team, make_user
from tests.integration.conftest import wait_for
from training.models import Run

from .conftest import log_in, unfold

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

STEPS = 120


def chart_steps(page, trace: int = 0) -> list[int]:
    return page.evaluate(f"() => document.getElementById('chart-loss').data[{trace}].x")


def status_text(page) -> str:
    return page.inner_text("#run-status")


def test_the_demo_run_started_in_the_browser_draws_its_loss_live(web_server, celery_worker, tiny_model, page,
                                                                  screenshot_path, tmp_path):
    team = make_team("Demo team")
    user = make_member(team, role=Membership.Role.ADMIN, user=make_user("demo", password="demo-password"))
    dataset = make_dataset(team, user, rows=256, tmp_dir=tmp_path, name="colours")
    preset = make_preset(team, name="Demo: tiny model, live curve", **demo_preset_config(Path(tiny_model)))

    log_in(page, web_server, "demo", "demo-password")
    page.click("text=New run")
    page.select_option("#id_dataset", str(dataset.id))
    unfold(page, "preset", "name")
    page.select_option("#id_preset", str(preset.id))
    page.fill("#id_name", "demo run")
    page.fill("#id_max_steps", str(STEPS))  # the demo's 300 steps, shortened for the test
    wait_for(lambda: page.inner_text("#derived-total_steps") == str(STEPS), timeout=10,
             what="the derived steps to follow max_steps")
    page.click("#run-form button[type=submit]")
    page.wait_for_url(re.compile(r"/runs/\d+/$"))
    run = Run.objects.get(name="demo run")
    assert page.url.endswith(f"/runs/{run.id}/")

    # Points arrive while the page stays open: the count grows between looks, with the run still training.
    first = wait_for(lambda: len(chart_steps(page)), timeout=120, what="the first loss point")
    counts = [first]
    while len(counts) < 4:
        grown = wait_for(lambda: len(chart_steps(page)) > counts[-1] and len(chart_steps(page)), timeout=60,
                           what=f"more than {counts[-1]} loss points")
        counts.append(grown)
        assert status_text(page) == "Running"
    assert counts == sorted(set(counts)) and counts[-1] < STEPS, counts

    # A dropped connection (the server restarts mid-run): the page reconnects and asks for what it missed.
    web_server.restart()
    wait_for(lambda: page.inner_text("#live-state") in ("live", "ended"), timeout=60, what="the page to reconnect")

    # The README's screenshot: the run live, most of the way through.
    wait_for(lambda: len(chart_steps(page)) >= STEPS * 0.7 or status_text(page) != "Running", timeout=120,
               what="70% of the run")
    if status_text(page) == "Running":
        drawn = len(chart_steps(page))
        shown = int(re.match(r"step (\d+) of", page.inner_text("#run-steps")).group(1))
        assert drawn - 2 <= shown <= drawn + 2, (shown, drawn)  # the header moves with the points
    page.evaluate("() => window.scrollTo(0, 0)")
    page.screenshot(path=str(screenshot_path("screenshot.png")))

    wait_for(lambda: status_text(page) == "Succeeded", timeout=180, what="the run to succeed")
    try:
        wait_for(lambda: len(chart_steps(page)) == STEPS, timeout=10, what="every loss point")
    except AssertionError:
        steps = chart_steps(page)
        missing = sorted(set(range(1, STEPS + 1)) - set(steps))
        raise AssertionError(f"{len(steps)} loss points drawn, missing steps {missing}; live state "
                             f"{page.inner_text('#live-state')!r}; events {page.inner_text('#events')!r}") from None
    assert chart_steps(page) == list(range(1, STEPS + 1)), "a gap or a duplicate in the loss curve"
    assert chart_steps(page, trace=1) == list(range(20, STEPS + 1, 20))
    assert page.inner_text("#run-steps") == f"step {STEPS} of {STEPS}"
    assert "Trainable parameters" in page.inner_text("#facts")
    wait_for(lambda: page.locator("#adapter-files a").count() > 0, timeout=10, what="the adapter's files")
    assert page.locator("#samples li[data-sample]").count() > 0
    assert page.locator("#stop-form").is_hidden()
    events = page.inner_text("#events")  # the last two arrived live, after the reconnect
    assert "checkpoint at step 100" in events and "finished at step 120" in events, events

    # Opened after the end, the page draws the same curve from the database.
    page.reload()
    wait_for(lambda: len(chart_steps(page)) == STEPS, timeout=30, what="the replayed curve")
    assert chart_steps(page) == list(range(1, STEPS + 1))
    assert page.js_errors == []
