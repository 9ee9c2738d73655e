"""The run list: the user's teams' runs only, with status, progress, queue position and findings, paginated, and
fast with 10,000 runs (a fixed number of queries whatever the page holds)."""
import re

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


def test_a_thousand_runs_page_through_in_a_fixed_number_of_queries(world):
    """1,000 runs: every page answers, the last one included, with as many queries as the first. The time target at
    10,000 runs (p95 <= 150 ms) is the benchmark's (bench/api.py --pages-only, docs/benchmarks.md), not a test's."""
    _bulk_runs(world, 1_000)
    client = client_for(world.member)
    counts = {}
    for page in ("1", "10", "21"):
        with CaptureQueriesContext(connection) as queries:
            response = client.get(f"/runs/?page={page}")
        assert response.status_code == 200
        assert f"page {page} of 21" in response.content.decode()
        counts[page] = len(queries)
    assert len(set(counts.values())) == 1, counts


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
    # the column's head is a glossary term (a link with its one-line explanation)
    assert re.search(r'<th><a class="term" href="/guidance/#term-pre-flight" title="[^"]+">Pre-flight</a></th>', html)
    cells = preflight_cells(html)
    assert set(cells) == {hot.id, world.run.id, tame.id}
    assert cells[hot.id] == (f'<a class="badge" href="/runs/{hot.id}/#before-it-started" '
                             'title="the pre-flight review\'s notes on its config">4</a>')
    assert re.search(r">2</a>$", cells[world.run.id])
    assert cells[tame.id] == '<span class="muted">0</span>'


@pytest.fixture
def table(world, tmp_path):
    """Four runs of team Alpha besides the world's: tags, eval losses, durations, a second dataset and model, one
    started by the viewer."""
    from datetime import timedelta

    from django.utils import timezone

    from tests.factories import make_dataset, tiny_overrides
    from training.runs import services

    other_data = make_dataset(world.team, world.member, tmp_dir=tmp_path, name="other data")
    now = timezone.now()
    low = named_run(world.team, world.member, world.dataset, "low loss")
    high = named_run(world.team, world.member, world.dataset, "high loss")
    other = services.run_create(team=world.team, user=world.member, dataset=other_data, name="other dataset",
                                overrides=tiny_overrides("other-model"))
    theirs = named_run(world.team, world.member, world.dataset, "viewer's run")
    Run.objects.filter(id=low.id).update(status=Run.Status.SUCCEEDED, best_eval_loss=0.8, best_eval_step=40,
                                         tags=["baseline"], started_at=now - timedelta(minutes=9),
                                         finished_at=now - timedelta(minutes=5))
    Run.objects.filter(id=high.id).update(status=Run.Status.SUCCEEDED, best_eval_loss=1.9, best_eval_step=20,
                                          tags=["baseline", "lr"], started_at=now - timedelta(minutes=30),
                                          finished_at=now - timedelta(minutes=10))
    Run.objects.filter(id=other.id).update(status=Run.Status.FAILED, started_at=now - timedelta(seconds=50),
                                           finished_at=now - timedelta(seconds=20))
    Run.objects.filter(id=theirs.id).update(created_by=world.viewer)
    return {"low": low, "high": high, "other": other, "theirs": theirs, "other_data": other_data}


def names(response) -> list[str]:
    return [run.name for run in response.context["page"].object_list]


def test_the_runs_table_filters_by_each_parameter_of_the_url(world, member_client, table):
    assert names(member_client.get("/runs/?q=LOSS")) == ["high loss", "low loss"]
    assert names(member_client.get("/runs/?status=succeeded")) == ["high loss", "low loss"]
    assert names(member_client.get("/runs/?status=failed&status=succeeded")) == ["other dataset", "high loss",
                                                                                "low loss"]
    assert names(member_client.get(f"/runs/?dataset={table['other_data'].id}")) == ["other dataset"]
    assert names(member_client.get("/runs/?model=other-model")) == ["other dataset"]
    assert names(member_client.get("/runs/?tag=lr")) == ["high loss"]
    assert names(member_client.get("/runs/?tag=baseline&q=low")) == ["low loss"]
    assert "viewer's run" not in names(member_client.get("/runs/?mine=true"))
    assert names(client_for(world.viewer).get("/runs/?mine=true")) == ["viewer's run"]
    empty = member_client.get("/runs/?q=nothing-like-this")
    assert names(empty) == [] and 'id="no-match"' in empty.content.decode()
    # what the filters offer: the team's datasets, models, tags; never another team's
    html = member_client.get("/runs/").content.decode()
    assert '<option value="other-model">' in html and '<option value="lr">' in html
    assert "beta data" not in html


def test_the_runs_table_sorts_on_eval_loss_duration_and_created_with_empty_values_last(world, member_client, table):
    assert names(member_client.get("/runs/?sort=eval_loss"))[:2] == ["low loss", "high loss"]
    assert names(member_client.get("/runs/?sort=-eval_loss"))[:2] == ["high loss", "low loss"]
    assert names(member_client.get("/runs/?sort=-duration"))[:3] == ["high loss", "low loss", "other dataset"]
    assert names(member_client.get("/runs/?sort=duration"))[:3] == ["other dataset", "low loss", "high loss"]
    assert names(member_client.get("/runs/?sort=created"))[0] == "alpha run"
    html = member_client.get("/runs/?sort=eval_loss&tag=baseline").content.decode()
    # The header of the sorted column turns it the other way and keeps the filters; the others keep them too.
    assert 'href="?sort=-eval_loss&amp;tag=baseline"' in html
    assert 'href="?sort=-duration&amp;tag=baseline"' in html
    assert '0.8 <span class="muted small">@ 40</span>' in html and "4 min 00 s" in html


def test_pages_keep_the_filters_and_sort(world, member_client):
    for i in range(RUNS_PER_PAGE + 1):
        Run.objects.filter(id=named_run(world.team, world.member, world.dataset, f"paged {i}").id).update(
            best_eval_loss=i)
    first = member_client.get("/runs/?q=paged&sort=-eval_loss")
    assert names(first)[0] == f"paged {RUNS_PER_PAGE}"
    assert 'href="?q=paged&amp;sort=-eval_loss&amp;page=2"' in first.content.decode()
    assert names(member_client.get("/runs/?q=paged&sort=-eval_loss&page=2")) == ["paged 0"]


@pytest.mark.parametrize("query, field", [("status=banana", "status"), ("sort=colour", "sort"),
                                          ("dataset=abc", "dataset"), ("sort=-", "sort")])
def test_a_bad_filter_is_named_and_the_table_is_shown_unfiltered(world, member_client, query, field):
    response = member_client.get(f"/runs/?{query}")
    assert response.status_code == 400
    html = response.content.decode()
    errors = html[html.index('id="filter-errors"'):]
    assert f"<code>{field}</code>" in errors[:errors.index("</div>")]
    assert names(response) == ["alpha run"]


def test_a_member_tags_and_notes_a_run_and_a_viewer_cannot(world, member_client, viewer_client):
    run = world.run
    response = member_client.post(f"/runs/{run.id}/label/", {"tags": "Baseline, lr-2e-4, baseline",
                                                              "note": "the first try"}, follow=True)
    run.refresh_from_db()
    assert (run.tags, run.note) == (["baseline", "lr-2e-4"], "the first try")
    assert "Tags and note saved." in response.content.decode()
    assert names(member_client.get("/runs/?tag=lr-2e-4")) == ["alpha run"]
    refused = member_client.post(f"/runs/{run.id}/label/", {"tags": "ok, no spaces allowed", "note": "x"},
                                 follow=True)
    assert "tags: &#x27;no spaces allowed&#x27; is not a tag" in refused.content.decode()
    run.refresh_from_db()
    assert (run.tags, run.note) == (["baseline", "lr-2e-4"], "the first try")  # nothing changed
    assert viewer_client.post(f"/runs/{run.id}/label/", {"tags": "mine"}).status_code == 403
    assert client_for(world.outsider).post(f"/runs/{run.id}/label/", {"tags": "x"}).status_code == 404
