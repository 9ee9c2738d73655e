"""In a real browser: a continuation still queued after two resumes draws the curve it continues, each earlier run's
part muted and dashed under its own legend line, and its own live points follow from the step it resumed from
without a reload, none drawn twice."""
import math

import pytest
from django.utils import timezone

from tests.factories import idle_queue, make_dataset, make_member, make_team, make_user, tiny_overrides
from training import selectors
from training.live import send as live
from training.models import MetricPoint, Run
from training.runs import services

from .conftest import log_in

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def loss_at(step: int) -> float:
    return 2.6 * math.exp(-step / 14) + 0.9 + 0.04 * math.sin(step * 1.7)


def traces(page) -> list[dict]:
    return page.evaluate("""() => document.getElementById('chart-loss').data.map(
      (t) => ({ name: t.name, x: t.x, dash: t.line.dash, legend: t.showlegend !== false }))""")


def test_a_queued_continuation_draws_the_earlier_runs_curve_then_its_own(web_server, page, tmp_path,
                                                                          screenshot_path):
    team = make_team()
    user = make_member(team, user=make_user("resumer", password="resumer-password"))
    dataset = make_dataset(team, user, tmp_dir=tmp_path, name="support chats")
    now = timezone.now()

    def record(run: Run, steps: range) -> None:
        MetricPoint.objects.bulk_create([MetricPoint(run=run, step=s, loss=loss_at(s), grad_norm=1.2 - s / 60,
                                                     learning_rate=2e-4 * (1 - s / 40),
                                                     tokens_per_s=1800.0 + 40 * math.sin(s), time=now,
                                                     eval_loss=loss_at(s) + 0.08 if s % 5 == 0 else None)
                                         for s in steps])

    def lose_and_resume(run: Run, steps: range, checkpoint: int) -> Run:
        record(run, steps)
        Run.objects.filter(id=run.id).update(status=Run.Status.LOST, last_checkpoint_path=f"/ckpt/{checkpoint}",
                                             last_checkpoint_step=checkpoint, last_step=steps[-1])
        run.refresh_from_db()
        return services.run_resume(run=run, user=user, queue=idle_queue())

    first = services.run_create(team=team, user=user, dataset=dataset, queue=idle_queue(), name="lr 2e-4",
                                overrides=tiny_overrides("tiny-model", max_steps=40))
    second = lose_and_resume(first, range(1, 15), checkpoint=10)
    third = lose_and_resume(second, range(10, 27), checkpoint=20)  # steps 21-26 are trained again by the third

    log_in(page, web_server, "resumer", "resumer-password")
    page.goto(f"{web_server.url}/runs/{third.id}/")
    page.wait_for_function("document.getElementById('live-state').dataset.state === 'live'")
    page.wait_for_function("document.getElementById('chart-loss').dataset.earlierPoints === '20'")
    assert page.inner_text("#run-status") == "Queued"
    own, own_eval, *earlier = traces(page)
    assert (own["name"], own["x"], own["dash"]) == ("train loss", [], "solid") and own_eval["x"] == []
    one, two = f"run #{first.id}, up to step 10", f"run #{second.id}, up to step 20"
    # Each earlier run's train loss (in the legend) and eval loss (in its legend group).
    assert [(t["name"], t["x"], t["legend"]) for t in earlier] == [
        (one, list(range(1, 11)), True), (one, [5, 10], False),
        (two, list(range(11, 21)), True), (two, [15, 20], False)]
    assert all(t["dash"] != "solid" for t in earlier)
    legend = page.locator("#chart-loss .legend").text_content()
    assert one in legend and two in legend
    assert page.get_attribute("#chart-grad_norm", "data-earlier-points") == "20"
    page.screenshot(path=str(screenshot_path("resumed-run-curve.png")))

    # The worker takes it: from step 20's checkpoint it logs 20 again, then its own steps, live.
    page.evaluate("window.notReloaded = true")
    Run.objects.filter(id=third.id).update(status=Run.Status.RUNNING, started_at=now)
    third.refresh_from_db()
    live.send_run_message(third.id, "status", selectors.run_status_dict(third))
    record(third, range(20, 31))
    sent = [{"kind": "metrics", "step": s, "loss": loss_at(s)} for s in range(20, 31)]
    live.send_run_message(third.id, "points", {"points": sent, "after": {"metrics": None, "eval": None}})
    page.wait_for_function("document.getElementById('chart-loss').dataset.points === '10'")
    own, _, *earlier = traces(page)
    assert own["x"] == list(range(21, 31))
    assert [t["x"] for t in earlier] == [list(range(1, 11)), [5, 10], list(range(11, 21)), [15, 20]]
    assert page.evaluate("window.notReloaded") is True and page.inner_text("#run-status") == "Running"
    assert page.js_errors == []
    page.screenshot(path=str(screenshot_path("resumed-run-curve-live.png")))
