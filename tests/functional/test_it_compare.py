"""The Compare page, its data requests and its exports: team scoping, clear errors, the differing parameters."""
from __future__ import annotations

import csv
import io
import json
import math
import re
from datetime import datetime, timedelta, timezone

import pytest
from django.urls import Resolver404, resolve

from guidance import calculators, content
from tests.factories import make_dataset
from training.models import MetricPoint, Run, SeriesPack

from .conftest import client_for, named_run

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)


def add_points(run: Run, steps: int, *, spike_at: int | None = None, nan_at: int | None = None,
               eval_every: int = 10) -> None:
    points = []
    for step in range(1, steps + 1):
        loss = 2.0 - step / (steps * 2)
        if step == spike_at:
            loss = 50.0
        if step == nan_at:
            loss = math.nan
        points.append(MetricPoint(run=run, step=step, epoch=step / steps, tokens_seen=step * 100, loss=loss,
                                  eval_loss=loss + 0.1 if step % eval_every == 0 else None, grad_norm=1.0,
                                  learning_rate=1e-4, tokens_per_s=1000.0 + step, peak_vram_bytes=2**30,
                                  time=T0 + timedelta(seconds=step)))
    MetricPoint.objects.bulk_create(points)
    Run.objects.filter(id=run.id).update(last_step=steps, started_at=T0)
    run.refresh_from_db()


def finish(run: Run) -> None:
    Run.objects.filter(id=run.id).update(status=Run.Status.SUCCEEDED)
    run.refresh_from_db()


@pytest.fixture
def three(world):
    """The world's run (r 16, lr 2e-4 by default) and two that differ in r and in learning_rate."""
    b = named_run(world.team, world.member, world.dataset, "rank 8", r=8)
    c = named_run(world.team, world.member, world.dataset, "rank 8 fast", r=8, learning_rate=5e-4)
    return [world.run, b, c]


def ids(runs) -> str:
    return ",".join(str(r.id) for r in runs)


def differing_rows(html: str) -> list[str]:
    return re.findall(r'<tr class="param-row differs" data-param="(\w+)"', html)


def test_the_page_shows_two_runs_and_only_the_differing_parameter(member_client, world, three):
    response = member_client.get(f"/compare/?runs={ids(three[:2])}")
    assert response.status_code == 200
    html = response.content.decode()
    assert "Compare 2 runs" in html and "alpha run" in html and "rank 8" in html
    assert differing_rows(html) == ["r"]
    for metric in ("loss", "eval_loss", "grad_norm", "learning_rate", "tokens_per_s", "peak_vram_bytes"):
        assert f'id="chart-{metric}"' in html
    data = json.loads(re.search(r'<script id="compare-data" type="application/json">(.*?)</script>', html,
                                re.S).group(1))
    assert data["differing"] == ["r"]
    assert [run["legend"] for run in data["runs"]] == [f"#{three[0].id} r=16", f"#{three[1].id} r=8"]


def test_three_runs_list_exactly_the_fields_that_differ_with_guidance_and_prediction(member_client, world, three):
    html = member_client.get(f"/compare/?runs={ids(three)}").content.decode()
    assert differing_rows(html) == ["r", "learning_rate"]
    # every other field is in the table too, hidden until "show all"
    assert re.search(r'<tr class="param-row" data-param="lora_alpha" hidden>', html)
    # guidance beside the charts: the one line and the seed's prediction for r 16 → 8 and lr 2e-4 → 5e-4
    assert content.get("r").one_line in html or content.get("r").one_line.replace("'", "&#x27;") in html
    from django.utils.html import escape
    assert escape(calculators.prediction_for_change("r", 16, 8)) in html
    assert escape(calculators.prediction_for_change("learning_rate", 2e-4, 5e-4)) in html
    # the parameter's guidance page when there is one, else its content inline
    try:
        resolve("/guidance/r/")
    except Resolver404:
        assert "Guidance for r</summary>" in html and content.get("r").sections["Definition"]["html"] in html
    else:
        assert 'href="/guidance/r/"' in html


@pytest.mark.parametrize("query, field, words", [
    ("runs=", "runs", "choose at least 2"),
    ("runs={a}", "runs", "1 run chosen; choose at least 2"),
    ("runs=" + ",".join(str(i) for i in range(1, 22)), "runs", "at most 20"),
    ("runs={a},abc", "runs", "'abc' is not a run id"),
    ("runs={a},{b}&x=minutes", "x", "'minutes' is not an x axis"),
    ("runs={a},{b}&smooth=1.5", "smooth", "out of range"),
    ("runs={a},{b}&smooth=nan", "smooth", "not a finite number"),
    ("runs={a},{b}&metric=accuracy", "metric", "'accuracy' is not a compared metric"),
    ("runs={a},{b}&group=colour", "group", "'colour' is not a config field"),
])
def test_bad_input_is_a_clear_400_not_a_500(member_client, three, query, field, words):
    query = query.format(a=three[0].id, b=three[1].id)
    page = member_client.get(f"/compare/?{query}")
    assert page.status_code == 400
    assert words in page.content.decode().replace("&#x27;", "'")
    data = member_client.get(f"/compare/data/?{query}")
    assert data.status_code == 400
    body = data.json()
    assert body["field"] == field and words in body["error"] and body["allowed"]


def test_another_teams_run_is_a_404_everywhere(member_client, world, three):
    mixed = f"{three[0].id},{world.other_run.id}"
    for url in (f"/compare/?runs={mixed}", f"/compare/data/?runs={mixed}&metric=loss",
                f"/compare/export.csv?runs={mixed}", f"/compare/export.json?runs={mixed}"):
        assert member_client.get(url).status_code == 404, url
    assert member_client.get(f"/compare/?runs={three[0].id},999999").status_code == 404
    outsider = client_for(world.outsider)
    assert outsider.get(f"/compare/?runs={ids(three[:2])}").status_code == 404


def test_logged_out_is_sent_to_log_in(client, three):
    response = client.get(f"/compare/?runs={ids(three[:2])}")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_the_checkboxes_of_the_run_list_reach_the_page(member_client, three):
    html = member_client.get("/runs/").content.decode()
    assert f'name="runs" value="{three[1].id}"' in html and 'action="/compare/"' in html
    response = member_client.get(f"/compare/?runs={three[0].id}&runs={three[1].id}")
    assert response.status_code == 200 and "Compare 2 runs" in response.content.decode()


def test_the_csv_export_holds_every_point_of_every_run(member_client, three):
    add_points(three[0], 30, nan_at=7)
    add_points(three[1], 20)
    response = member_client.get(f"/compare/export.csv?runs={ids(three[:2])}")
    assert response.status_code == 200
    assert response["Content-Disposition"] == f'attachment; filename="compare-{three[0].id}-{three[1].id}.csv"'
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert len(rows) == 50
    first = [r for r in rows if r["run_id"] == str(three[0].id)]
    assert [int(r["step"]) for r in first] == list(range(1, 31))
    assert first[6]["loss"] == "nan" and first[6]["eval_loss"] == ""
    assert float(first[9]["eval_loss"]) == pytest.approx(2.0 - 10 / 60 + 0.1)
    assert first[0]["run_name"] == "alpha run" and first[0]["tokens_seen"] == "100"


def test_the_json_export_holds_configs_outcomes_and_points(member_client, three):
    add_points(three[0], 30)
    add_points(three[1], 20)
    response = member_client.get(f"/compare/export.json?runs={ids(three[:2])}")
    assert response.status_code == 200
    body = json.loads(b"".join(response.streaming_content))
    assert body["differing"] == ["r"]
    first, second = body["runs"]
    assert (first["id"], second["id"]) == (three[0].id, three[1].id)
    assert first["config"]["r"] == 16 and second["config"]["r"] == 8
    assert first["points"]["step"] == list(range(1, 31)) and len(second["points"]["loss"]) == 20
    assert first["points"]["eval_loss"][9] == pytest.approx(2.0 - 10 / 60 + 0.1)
    assert first["outcomes"]["best_eval_loss"] == pytest.approx(2.0 - 30 / 60 + 0.1)


def test_the_data_keeps_a_spike_and_at_most_1000_points_per_series(member_client, three):
    add_points(three[0], 5000, spike_at=3333)
    add_points(three[1], 200)
    body = member_client.get(f"/compare/data/?runs={ids(three[:2])}&metric=loss&smooth=0.6").json()
    first, second = body["metrics"]["loss"]["runs"]
    assert first["points"] == 5000 and len(first["raw"]["x"]) <= 1000 and len(first["smooth"]["x"]) <= 1000
    assert 3333 in first["raw"]["x"] and max(first["raw"]["y"]) == 50.0
    assert max(first["smooth"]["y"]) < 50.0  # smoothed at full resolution
    assert second["raw"]["x"] == list(range(1, 201))
    assert first["ema"]["count"] == 5000
    # a zoom asks for a range: bucketed over that range only, with one point either side
    zoomed = member_client.get(f"/compare/data/?runs={ids(three[:2])}&metric=loss&x0=1000&x1=1200").json()
    assert zoomed["metrics"]["loss"]["runs"][0]["raw"]["x"] == list(range(999, 1202))


def test_other_x_axes_and_groups(member_client, three):
    for run in three:
        add_points(run, 100)
    base = f"/compare/data/?runs={ids(three)}&metric=loss&smooth=0"
    tokens = member_client.get(base + "&x=tokens").json()["metrics"]["loss"]["runs"][0]
    assert tokens["raw"]["x"][:3] == [100, 200, 300] and tokens["smooth"] is None
    wall = member_client.get(base + "&x=time").json()["metrics"]["loss"]["runs"][0]
    assert wall["raw"]["x"][:2] == [1.0, 2.0]  # seconds since the run started
    groups = member_client.get(base + "&group=r").json()["metrics"]["loss"]["groups"]
    assert [(g["value"], len(g["runs"])) for g in groups] == [("16", 1), ("8", 2)]
    assert groups[1]["mean"][0] == pytest.approx(2.0 - 1 / 200)


def test_a_finished_runs_series_comes_from_its_pack_and_matches_the_rows(member_client, three):
    add_points(three[0], 3000, spike_at=100)
    add_points(three[1], 3000)
    url = f"/compare/data/?runs={ids(three[:2])}&metric=loss,eval_loss&x=epoch"
    from_rows = member_client.get(url).json()
    assert not SeriesPack.objects.exists()
    for run in three[:2]:
        finish(run)
    from_packs = member_client.get(url).json()
    assert SeriesPack.objects.filter(run=three[0]).count() == 3  # loss, eval_loss and the epoch axis
    assert from_packs == from_rows
    # more points under a changed last_step: the pack is rebuilt, not served stale
    MetricPoint.objects.create(run=three[0], step=3001, epoch=1.01, loss=0.25, time=T0)
    Run.objects.filter(id=three[0].id).update(last_step=3001)
    again = member_client.get(url).json()
    assert again["metrics"]["loss"]["runs"][0]["points"] == 3001


def test_a_sweep_link_compares_its_runs(member_client, world, three):
    from training.models import Sweep

    sweep = Sweep.objects.create(team=world.team, name="rank sweep", template="r", dataset=three[0].dataset,
                                 queue="gpu")
    Run.objects.filter(id__in=[three[0].id, three[1].id]).update(sweep=sweep)
    response = member_client.get(f"/compare/?sweep={sweep.id}")
    assert response.status_code == 200 and "Compare 2 runs" in response.content.decode()
    other = Sweep.objects.create(team=world.other_team, name="theirs", template="r", dataset=three[0].dataset,
                                 queue="gpu")
    assert member_client.get(f"/compare/?sweep={other.id}").status_code == 404


def test_a_link_with_metric_shows_only_those_charts(member_client, three):
    html = member_client.get(f"/compare/?runs={ids(three[:2])}&metric=loss,eval_loss&x=epoch&smooth=0.3").content.decode()
    assert 'id="chart-loss"' in html and 'id="chart-eval_loss"' in html and 'id="chart-grad_norm"' not in html
    assert '<option value="epoch" selected>' in html and 'value="0.3"' in html


def test_the_outcomes_rows_show_each_runs_numbers(member_client, three):
    add_points(three[0], 40, eval_every=10)
    html = member_client.get(f"/compare/?runs={ids(three[:2])}").content.decode()
    best = re.search(r"<th>Best eval loss</th><td>([^<]*)</td><td>([^<]*)</td>", html)
    assert best.groups() == (f"{2.0 - 40 / 80 + 0.1:.4g}", "—")
    vram = re.search(r"<th>Peak VRAM \(GiB\)</th><td>([^<]*)</td>", html)
    assert vram.group(1) == "1"
    # the row's label is a glossary term (a link with its one-line explanation)
    assert re.search(r"<th><a class=\"term\"[^>]*>Effective batch</a></th><td>8</td><td>8</td>", html)


def test_a_viewer_of_the_team_may_compare_and_export(viewer_client, three):
    assert viewer_client.get(f"/compare/?runs={ids(three)}").status_code == 200
    assert viewer_client.get(f"/compare/export.csv?runs={ids(three)}").status_code == 200


def test_the_same_change_in_several_runs_is_one_prediction(member_client, world, three):
    d = named_run(world.team, world.member, world.dataset, "rank 8 again", r=8)
    html = member_client.get(f"/compare/?runs={three[0].id},{three[1].id},{d.id}").content.decode()
    r_item = html[html.index('data-param="r"'):]
    assert f"#{three[0].id} → #{three[1].id}, #{d.id}: 16 → 8" in r_item
    assert r_item[:r_item.index("</ul>")].count("<li>") == 1


@pytest.mark.django_db
def test_each_runs_findings_are_listed_with_their_guidance_and_counted(three, member_client):
    from guidance.models import Finding

    a, b, c = three
    Finding.objects.create(run=b, code="flat_loss", severity="warning", step=22, title="Loss is flat: the adapter is "
                           "not learning", message="...", parameters=["learning_rate", "lora_alpha"])
    html = member_client.get(f"/compare/?runs={ids(three)}").content.decode()
    card = html[html.index('id="compare-findings"'):]
    card = card[:card.index("</section>")]
    assert re.findall(r'<ul class="findings" id="findings-(\d+)">', card) == [str(a.id), str(b.id), str(c.id)]
    listed = card[card.index(f'id="findings-{b.id}"'):]
    listed = listed[:listed.index("</ul>")]
    assert 'data-finding="flat_loss@22"' in listed and "Loss is flat" in listed
    assert 'href="/guidance/learning_rate/#impact_and_symptoms"' in listed
    assert re.search(rf'<tr class="outcome-row" data-outcome="findings">.*?<td data-run="{b.id}">1</td>', html, re.S)
    assert re.search(rf'<tr class="outcome-row" data-outcome="findings">.*?<td data-run="{a.id}">0</td>', html, re.S)


@pytest.mark.django_db
def test_each_runs_pre_flight_notes_are_shown_beside_its_findings(world, member_client):
    from guidance.models import Finding

    hot = named_run(world.team, world.member, world.dataset, "hot", learning_rate=0.3)
    tame = named_run(world.team, world.member, world.dataset, "tame", warmup_steps=10, r=8, lora_alpha=16)
    runs = [world.run, hot, tame]
    Finding.objects.create(run=hot, code="early_instability", severity="warning", step=3, title="Unstable start",
                           message="...", parameters=["learning_rate", "warmup_steps", "dtype"])
    html = member_client.get(f"/compare/?runs={ids(runs)}").content.decode()
    card = html[html.index('id="compare-findings"'):]
    card = card[:card.index("</section>")]
    assert re.search(r"<h2><a class=\"term\"[^>]*>Findings</a> and <a class=\"term\"[^>]*>pre-flight</a> notes</h2>", card)
    assert re.findall(r'<ul class="findings preflight-notes" id="preflight-(\d+)">', card) == [
        str(r.id) for r in runs]
    for run in runs:
        # Each run's column: its findings, then its notes, before the next run's findings.
        column = card[card.index(f'id="findings-{run.id}"'):]
        nxt = re.search(r'id="findings-\d+"', column[1:])
        column = column[:nxt.start() + 1] if nxt else column
        notes = column[column.index(f'id="preflight-{run.id}"'):]
        notes = notes[:notes.index("</ul>")]
        assert re.findall(r'data-note="(\w+)"', notes) == [n["code"] for n in run.preflight], run.name
        for note in run.preflight:
            assert f'<a href="{note["guidance_url"]}">' in notes
    hot_column = card[card.index(f'id="findings-{hot.id}"'):card.index(f'id="preflight-{hot.id}"')]
    assert 'data-finding="early_instability@3"' in hot_column
    hot_notes = card[card.index(f'id="preflight-{hot.id}"'):]
    hot_notes = hot_notes[:hot_notes.index("</ul>")]
    assert [n["code"] for n in hot.preflight][:2] == ["learning_rate_off", "weight_decay_heavy_for_learning_rate"]
    assert ('<strong>Learning rate 0.3 is 1,500x above the LoRA default</strong>' in hot_notes
            and '<a href="/guidance/learning_rate/#too_high"><code>learning_rate</code></a>' in hot_notes)
    tame_notes = card[card.index(f'id="preflight-{tame.id}"'):]
    assert tame_notes[:tame_notes.index("</ul>")].count("No pre-flight notes.") == 1


def test_runs_on_different_datasets_are_flagged_first_and_an_equal_effective_batch_is_not_smaller(
        member_client, world, tmp_path):
    other = make_dataset(world.team, world.member, tmp_dir=tmp_path, name="other data")
    a = named_run(world.team, world.member, world.dataset, "2x4", per_device_train_batch_size=2,
                  gradient_accumulation_steps=4)
    b = named_run(world.team, world.member, other, "8x1", per_device_train_batch_size=8,
                  gradient_accumulation_steps=1)
    html = member_client.get(f"/compare/?runs={a.id},{b.id}").content.decode()
    warning = html[html.index('id="not-comparable"'):]
    assert html.index('id="not-comparable"') < html.index('class="card compare-controls"')
    assert "Losses not comparable: the runs trained on different datasets" in warning
    assert f"alpha data: #{a.id}; other data: #{b.id}" in warning
    item = html[html.index('data-param="gradient_accumulation_steps"'):]
    item = item[:item.index("</ul>")]
    assert "same effective batch, 8 (2×4 and 8×1)" in item and "smaller effective batch" not in item
    derived = html[html.index('id="derived-changes"'):]
    assert 'data-derived="effective_batch"' in derived[:derived.index("</ul>")]


def test_runs_on_one_dataset_and_model_carry_no_comparability_warning(member_client, three):
    assert 'id="not-comparable"' not in member_client.get(f"/compare/?runs={ids(three)}").content.decode()
