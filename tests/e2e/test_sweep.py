"""In a real browser: from a parameter's guidance page, "Run this procedure" opens the sweep form with the procedure
chosen; the preview lists the members as the values are typed; the launched sweep's page shows a member running and
its loss curve drawing live, then the procedure's verdict and winner. Takes docs/sweep.png."""
import re

import pytest
from django.conf import settings

from tests.factories import make_dataset, make_member, make_preset, make_team, make_user, tiny_overrides
from tests.integration.conftest import wait_for
from tests.workers import start_worker, stop_worker
from training.models import Run, Sweep

from .conftest import log_in

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(600)]


@pytest.fixture
def cpu_worker(tmp_path):
    """The sweep's advance task (a member ended: judge the phase) runs on the cpu queue."""
    worker = start_worker(queue=settings.TUNEBOARD_CPU_QUEUE, name=f"cpu-sweep-{tmp_path.name}@test",
                          log=tmp_path / "cpu-worker.log")
    yield worker
    stop_worker(worker)


def chart_points(page, metric: str = "loss") -> int:
    return int(page.get_attribute(f"#chart-{metric}", "data-points") or 0)


def test_a_rank_sweep_from_the_guidance_page_trains_live_to_its_verdict(
        web_server, celery_worker, cpu_worker, tiny_model, page, screenshot_path, tmp_path):
    team = make_team("Tuning team")
    user = make_member(team, user=make_user("tuner", password="tuner-password"))
    dataset = make_dataset(team, user, rows=64, tmp_dir=tmp_path, name="colours")
    preset = make_preset(team, name="tiny, short", **tiny_overrides(tiny_model, max_steps=12, eval_split=0.2,
                                                                   eval_steps=6))
    log_in(page, web_server, "tuner", "tuner-password")

    page.goto(f"{web_server.url}/guidance/r/")
    page.click("text=Run this procedure")
    page.wait_for_url(re.compile(r"/sweeps/new/\?template=r$"))
    assert page.input_value("#id_template") == "r"
    page.select_option("#id_dataset", str(dataset.id))
    page.select_option("#id_preset", str(preset.id))
    # The procedure's own ranks for 64 rows, then the two typed: the preview follows the form.
    page.wait_for_function("() => document.querySelectorAll('#preview-members li').length === 3")
    assert page.input_value("#id_values") == "2, 4, 8"
    page.fill("#id_values", "2, 4")
    page.wait_for_function("() => document.querySelectorAll('#preview-members li').length === 2")
    assert page.inner_text("#preview-steps") == "24 over 2 members"
    assert "no history yet" in page.inner_text("#preview-gpu")
    page.fill("#id_name", "ranks in the browser")
    page.click("#launch")
    page.wait_for_url(re.compile(r"/sweeps/\d+/$"))
    sweep = Sweep.objects.get(name="ranks in the browser")
    assert page.url.endswith(f"/sweeps/{sweep.id}/")
    assert page.locator("tr[data-member]").count() == 2

    # A member trains, live: its row says running and the loss chart gains points while it does.
    page.wait_for_selector("span.status-running[data-status-for]", timeout=180_000)
    wait_for(lambda: chart_points(page) > 0, timeout=120, what="the first loss point on the sweep's chart")
    page.wait_for_function("() => document.getElementById('live-state').dataset.state === 'live'")

    # The verdict, as soon as the rule decides, with the winner marked.
    page.wait_for_function("() => document.getElementById('sweep-status').textContent === 'Finished'",
                           timeout=300_000)
    sweep.refresh_from_db()
    assert sweep.status == Sweep.Status.FINISHED, (sweep.verdict, sweep.error)
    verdict = page.inner_text("#sweep-verdict")
    assert verdict == sweep.verdict and "tolerance" in verdict, verdict
    assert page.inner_text("[data-verdict='0']") == sweep.phases.get().verdict["text"]
    assert page.inner_text("#sweep-winner-name") == sweep.winner.name
    assert page.locator("tr.winner").count() == 1
    assert page.locator("span.status-succeeded[data-status-for]").count() == 2
    runs = list(Run.objects.filter(sweep=sweep))
    wait_for(lambda: chart_points(page) == sum(r.last_step for r in runs), timeout=30,
             what="every member's loss points on the chart")
    assert chart_points(page, "eval_loss") >= 2
    page.evaluate("() => window.scrollTo(0, 0)")
    page.screenshot(path=str(screenshot_path("sweep.png")), full_page=True)
    assert not page.js_errors, page.js_errors
