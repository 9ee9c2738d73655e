"""In a real browser: pick three finished runs and one training live from the run list, compare them, switch the
x axis and the smoothing, zoom (the server sends the range again), and watch the live run's line grow."""
import math
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from dashboard.dev import demo_preset_config
from dashboard.models import Membership
from tests.factories import make_dataset, make_member, make_team, make_user
from tests.integration.conftest import wait_for
from training.models import MetricPoint, Run
from training.runs import services

from .conftest import log_in

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

FINISHED_STEPS = 3000  # over 1000 points: the browser gets buckets until it zooms in
LIVE_STEPS = 150
T0 = datetime(2026, 11, 24, 9, 0, tzinfo=timezone.utc)


def finished_run(team, user, dataset, model: str, *, learning_rate: float, bump: float) -> Run:
    """A run as a finished one looks in the database: its rows as the worker writes them, status succeeded. (The
    training itself is the live run's job here; three more real trainings would only make the test slower.)"""
    config = {**demo_preset_config(Path(model)), "learning_rate": learning_rate, "max_steps": FINISHED_STEPS}
    run = services.run_create(team=team, user=user, dataset=dataset, overrides=config, name=f"lr {learning_rate}",
                              queue="nobody-consumes-this")
    points = [MetricPoint(run=run, step=s, epoch=s / FINISHED_STEPS, tokens_seen=s * 1000,
                          loss=2.5 * math.exp(-s / 600) + bump + 0.05 * math.sin(s), grad_norm=1 + math.cos(s / 50),
                          eval_loss=2.6 * math.exp(-s / 600) + bump if s % 100 == 0 else None,
                          learning_rate=learning_rate, tokens_per_s=900.0, time=T0 + timedelta(seconds=s))
              for s in range(1, FINISHED_STEPS + 1)]
    MetricPoint.objects.bulk_create(points)
    Run.objects.filter(id=run.id).update(status=Run.Status.SUCCEEDED, last_step=FINISHED_STEPS, started_at=T0,
                                         finished_at=T0 + timedelta(seconds=FINISHED_STEPS))
    return run


def traces(page, metric: str = "loss") -> list[dict]:
    return page.evaluate(f"""() => (document.getElementById('chart-{metric}').data || []).map((t) => (
        {{run: t.meta && t.meta.run, kind: t.meta && t.meta.kind, x: t.x, n: t.x.length}}))""")


def line(page, run_id: int, kind: str = "raw") -> dict | None:
    return next((t for t in traces(page) if t["run"] == run_id and t["kind"] == kind), None)


def loads(page) -> int:
    return int(page.get_attribute("#chart-loss", "data-loaded"))


def test_compare_three_finished_runs_and_a_live_one(web_server, celery_worker, tiny_model, page, tmp_path,
                                                    screenshot_path):
    team = make_team("Compare team")
    user = make_member(team, role=Membership.Role.MEMBER, user=make_user("cmp", password="cmp-password"))
    dataset = make_dataset(team, user, rows=256, tmp_dir=tmp_path, name="colours")
    finished = [finished_run(team, user, dataset, tiny_model, learning_rate=lr, bump=bump)
                for lr, bump in ((1e-3, 0.0), (2e-3, 0.2), (5e-3, 0.4))]
    live = services.run_create(team=team, user=user, dataset=dataset, name="live one",
                               overrides={**demo_preset_config(Path(tiny_model)), "learning_rate": 0.004,
                                          "max_steps": LIVE_STEPS})

    log_in(page, web_server, "cmp", "cmp-password")
    for run in (*finished, live):
        page.check(f"input[name=runs][value='{run.id}']")
    page.click("text=Compare selected")
    page.wait_for_url("**/compare/?runs=*")
    assert page.inner_text("h1") == "Compare 4 runs"
    # learning_rate and max_steps differ, in the config's order
    differing = page.eval_on_selector_all("#params tr.differs", "rows => rows.map((r) => r.dataset.param)")
    assert differing == ["learning_rate", "max_steps"]
    assert page.locator(".guidance-item[data-param=learning_rate]").count() == 1

    wait_for(lambda: line(page, finished[0].id), timeout=30, what="the finished runs' lines")
    first = line(page, finished[0].id)
    assert first["n"] <= 1000 and line(page, finished[0].id, "smooth")["n"] <= 1000

    # The live run trains on the real worker; its line grows while the page stays open.
    n0 = wait_for(lambda: (line(page, live.id) or {"n": 0})["n"], timeout=180, what="the live run's first point")
    wait_for(lambda: line(page, live.id)["n"] > n0 + 3, timeout=60, what="the live line to grow")
    assert page.inner_text("#live-state") == "1 run live"
    assert page.inner_text(f"#status-{live.id}") == "Running"  # the header follows the run's status messages

    # x axis: tokens seen
    before = loads(page)
    page.select_option("#x-axis", "tokens")
    wait_for(lambda: loads(page) > before, timeout=20, what="the charts in tokens")
    in_tokens = line(page, finished[0].id)["x"]
    assert in_tokens[0] == 1000 and in_tokens[-1] == FINISHED_STEPS * 1000 and all(x % 1000 == 0 for x in in_tokens)
    assert "x=tokens" in page.url
    assert page.evaluate("() => document.getElementById('chart-loss').layout.xaxis.title.text") == "tokens seen"

    # smoothing off: one full-strength line per run; then heavy smoothing brings the faint raw line back
    before = loads(page)
    page.evaluate("() => { const s = document.getElementById('smooth'); s.value = '0'; "
                  "s.dispatchEvent(new Event('change')); }")
    wait_for(lambda: loads(page) > before, timeout=20, what="the unsmoothed charts")
    assert {t["kind"] for t in traces(page)} == {"raw"}
    before = loads(page)
    page.evaluate("() => { const s = document.getElementById('smooth'); s.value = '0.95'; "
                  "s.dispatchEvent(new Event('change')); }")
    wait_for(lambda: loads(page) > before, timeout=20, what="the smoothed charts")
    assert {t["kind"] for t in traces(page)} == {"raw", "smooth"} and "smooth=0.95" in page.url

    # zoom with the mouse on the loss chart: the server sends the range at full detail
    before = loads(page)
    box = page.locator("#chart-loss .nsewdrag").first.bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.30, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.36, y, steps=5)
    page.mouse.up()
    wait_for(lambda: loads(page) > before, timeout=20, what="the zoomed range from the server")
    x0, x1 = page.evaluate("() => document.getElementById('chart-loss').layout.xaxis.range")
    zoomed = line(page, finished[0].id)["x"]
    inside = [x for x in zoomed if x0 <= x <= x1]
    assert len(inside) >= (x1 - x0) / 1000 - 2, (x0, x1, len(inside))  # every step in range, none bucketed away
    assert len(zoomed) - len(inside) <= 2  # plus one point either side

    # log y on every chart; then group by learning_rate: a mean line and a min–max band per value
    page.check("#log-y")
    wait_for(lambda: page.evaluate("() => document.getElementById('chart-grad_norm').layout.yaxis.type") == "log",
               timeout=10, what="log y")
    before = loads(page)
    page.select_option("#group-by", "learning_rate")
    wait_for(lambda: loads(page) > before, timeout=20, what="the grouped charts")
    assert sorted(t["kind"] for t in traces(page)) == ["max"] * 4 + ["mean"] * 4 + ["min"] * 4
    before = loads(page)
    page.select_option("#group-by", "")
    wait_for(lambda: loads(page) > before, timeout=20, what="the per-run charts again")

    # still live after all that: the line keeps growing, now in tokens
    n1 = line(page, live.id)["n"]
    if Run.objects.get(id=live.id).status == Run.Status.RUNNING:
        wait_for(lambda: line(page, live.id)["n"] > n1, timeout=60, what="more live points after the zoom")
    page.evaluate("() => window.scrollTo(0, 0)")
    page.screenshot(path=str(screenshot_path("compare.png")), full_page=True)
    assert page.js_errors == []
