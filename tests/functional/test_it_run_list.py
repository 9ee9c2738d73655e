"""The run list: the user's teams' runs only, with status, progress, queue position and findings, paginated, and
fast with 10,000 runs (a fixed number of queries whatever the page holds)."""
import re
import time

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from guidance.models import Finding
from training.models import Run
from training.runs.views import RUNS_PER_PAGE

from .conftest import client_for, named_run

pytestmark = pytest.mark.django_db


def test_lists_the_teams_runs_with_status_queue_position_and_findings(world, member_client):
    second = named_run(world.team, world.member, world.dataset, "second alpha run")
    running = named_run(world.team, world.member, world.dataset, "running alpha run")
    Run.objects.filter(id=running.id).update(status=Run.Status.RUNNING, last_step=5, total_steps=20)
    Finding.objects.create(run=running, code="loss_spike", severity="warning", step=4, title="Loss spike",
                           message="loss jumped")
    Finding.objects.create(run=running, code="flat_loss", severity="warning", step=5, title="Flat", message="flat")
    page = member_client.get("/runs/")
    assert page.status_code == 200
    runs = {run.name: run for run in page.context["page"].object_list}
    assert set(runs) == {"alpha run", "second alpha run", "running alpha run"}  # not team Beta's
    # Positions count every queued run on the shared queue, another team's too (Beta's run is ahead).
    assert runs["alpha run"].queue_position == 1 and runs["second alpha run"].queue_position == 3
    assert runs["running alpha run"].queue_position is None and runs["running alpha run"].finding_count == 2
    html = page.content.decode()
    assert "#3 in queue" in html and "5/20" in html and "beta run" not in html
    assert f'href="/runs/{second.id}/"' in html


def test_a_viewer_sees_the_runs_but_no_new_run_button(world, viewer_client):
    html = viewer_client.get("/runs/").content.decode()
    assert "alpha run" in html and 'class="button primary" href="/runs/new/"' not in html


def test_bad_page_numbers_fall_back_to_a_real_page(member_client):
    for page in ("0", "-1", "abc", "99999", "1e9"):
        response = member_client.get(f"/runs/?page={page}")
        assert response.status_code == 200, page


def _bulk_runs(world, n):
    template = world.run
    Run.objects.bulk_create([
        Run(team=world.team, dataset=world.dataset, created_by=world.member, name=f"bulk {i}", config=template.config,
            dataset_sha256=template.dataset_sha256, queue=template.queue,
            status=Run.Status.QUEUED if i % 7 == 0 else Run.Status.SUCCEEDED, total_steps=20, last_step=i % 20)
        for i in range(n)], batch_size=2000)


def test_queries_do_not_grow_with_the_page(world, member_client):
    _bulk_runs(world, 3)
    with CaptureQueriesContext(connection) as few:
        member_client.get("/runs/")
    _bulk_runs(world, RUNS_PER_PAGE * 2)
    with CaptureQueriesContext(connection) as full:
        response = member_client.get("/runs/")
    assert len(response.context["page"].object_list) == RUNS_PER_PAGE
    assert len(full) == len(few), [q["sql"][:120] for q in full.captured_queries]


def test_ten_thousand_runs_page_fast(world):
    _bulk_runs(world, 10_000)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE training_run")
    client = client_for(world.member)
    timings = []
    for page in ["1", "2", "100", "200"] * 5:
        started = time.perf_counter()
        response = client.get(f"/runs/?page={page}")
        timings.append(time.perf_counter() - started)
        assert response.status_code == 200
    assert re.search(r"page 1 of 201|page \d+ of 201", response.content.decode())
    timings.sort()
    p95 = timings[int(len(timings) * 0.95) - 1]
    print(f"run list with 10,000 runs: p50 {timings[len(timings) // 2] * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms")
    # The design's target is 150 ms p95 (bench/ measures it); here, on a shared CI box, a wide margin.
    assert p95 < 0.5


def test_a_get_does_not_write_not_even_the_lost_run_check(world, member_client):
    """The run list, run page and workers page only read: a run whose only worker died stays as stored until a
    lost-run check marks it (a worker's heartbeat, or the web process's own:
    tests/integration/workers/test_lost_without_workers.py)."""
    from datetime import timedelta

    from django.utils import timezone

    from training.models import Worker

    dead = Worker.objects.create(name="dead@box", last_heartbeat_at=timezone.now() - timedelta(seconds=120))
    run = named_run(world.team, world.member, world.dataset, "orphaned run")
    Run.objects.filter(id=run.id).update(status=Run.Status.RUNNING, worker=dead,
                                         started_at=timezone.now() - timedelta(seconds=300))
    dead.current_runs.add(run)
    for url in ("/runs/", f"/runs/{run.id}/", "/workers/"):
        assert member_client.get(url).status_code == 200
        run.refresh_from_db()
        assert run.status == Run.Status.RUNNING, url


def preflight_cells(html: str) -> dict[int, str]:
    """Each row's Pre-flight cell, by run id."""
    return {int(run_id): cell for run_id, cell in re.findall(
        r'<tr data-run="(\d+)">.*?<td class="col-preflight">(.*?)</td>', html, re.S)}


def test_the_pre_flight_column_counts_each_runs_notes_and_links_to_them(world, member_client):
    hot = named_run(world.team, world.member, world.dataset, "hot alpha run", learning_rate=0.3)
    tame = named_run(world.team, world.member, world.dataset, "tame alpha run", warmup_steps=10, r=8, lora_alpha=16)
    assert (len(hot.preflight), len(world.run.preflight), len(tame.preflight)) == (4, 2, 0)
    html = member_client.get("/runs/").content.decode()
    assert '<th title="pre-flight notes on the config">Pre-flight</th>' in html
    cells = preflight_cells(html)
    assert set(cells) == {hot.id, world.run.id, tame.id}
    assert cells[hot.id] == (f'<a class="badge" href="/runs/{hot.id}/#before-it-started" '
                             'title="the pre-flight review\'s notes on its config">4</a>')
    assert re.search(r">2</a>$", cells[world.run.id])
    assert cells[tame.id] == '<span class="muted">0</span>'
