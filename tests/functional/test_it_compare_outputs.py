"""Evaluation in the Compare page: a row per eval suite in the outcomes (each run's final adapter's latest succeeded
evaluation, '—' where it has none) and /compare/outputs/, the same prompts' outputs for every run beside the base
model's, differences flagged, a page at a time, scoped to the user's teams, bad input a 400 naming the field.
Evaluations and their examples are written as the worker leaves them: nothing here needs to train."""
from __future__ import annotations

import json
import re

import pytest

from training.models import EvalExample, EvalSuite, Evaluation, Run, Sweep

from .conftest import named_run

pytestmark = pytest.mark.django_db

PROMPTS = [("2+2=", "4"), ("Capital of France?", "Paris"), ("Colour of the sky?", "blue")]
DECODING = {"max_new_tokens": 16, "temperature": 0.0, "top_p": 1.0, "seed": 0}


def make_suite(team, name="qa", metric="exact_match", rows=len(PROMPTS), **fields) -> EvalSuite:
    return EvalSuite.objects.create(team=team, name=name, path=f"/nowhere/{name}.jsonl", format="prompt_completion",
                                    rows=rows, sha256="0" * 64, metric=metric, **fields)


def evaluated(suite: EvalSuite, run: Run | None, outputs: list[str], *, figures: dict | None = None,
              status=Evaluation.Status.SUCCEEDED, prompts=PROMPTS, **fields) -> Evaluation:
    """An evaluation of the run's final adapter (or, run None, the base model) with its examples stored."""
    scores = [float(o == ref) for o, (_, ref) in zip(outputs, prompts)]
    values = {"team": suite.team, "suite": suite, "run": run, "model": "tiny-model", "decoding": DECODING,
              "queue": "nobody", "status": status,
              "figures": figures if figures is not None else {suite.metric: sum(scores) / len(scores),
                                                              "examples": len(scores)}, **fields}
    evaluation = Evaluation.objects.create(**values)
    EvalExample.objects.bulk_create([
        EvalExample(evaluation=evaluation, index=i, prompt=p, reference=r, output=o, score=s)
        for i, ((p, r), o, s) in enumerate(zip(prompts, outputs, scores))])
    return evaluation


@pytest.fixture
def two(world):
    return [world.run, named_run(world.team, world.member, world.dataset, "rank 8", r=8)]


def ids(runs) -> str:
    return ",".join(str(r.id) for r in runs)


def outcome_cells(html: str, key: str) -> list[str]:
    row = re.search(rf'<tr class="outcome-row suite-row" data-outcome="{key}"[^>]*>(.*?)</tr>', html, re.S)
    assert row, f"no outcome row {key}"
    return re.findall(r"<td[^>]*>(.*?)</td>", row.group(1))


# The outcome row ----------------------------------------------------------------------------------------------

def test_a_row_per_suite_beside_eval_loss_with_a_dash_where_a_run_has_none(member_client, world, two):
    qa = make_suite(world.team)
    evaluated(qa, two[0], ["4", "Paris", "green"])  # 2 of 3
    evaluated(qa, two[1], ["4", "Lyon", "green"], figures={"exact_match": 0.3333333, "examples": 3})
    sentiment = make_suite(world.team, "sentiment", metric="classification", labels=["positive", "negative"])
    evaluated(sentiment, two[1], ["positive"] * 3, figures={"accuracy": 0.75, "macro_f1": 0.5,
                                                           "minority_recall": 0.0, "examples": 3})
    html = member_client.get(f"/compare/?runs={ids(two)}").content.decode()
    assert html.index('data-outcome="best_eval_loss"') < html.index(f'data-outcome="suite_{qa.id}"')
    assert outcome_cells(html, f"suite_{qa.id}") == ["0.6667", "0.3333"]
    # a classification suite shows its accuracy; the run never evaluated on it a dash
    assert outcome_cells(html, f"suite_{sentiment.id}") == ["—", "0.75"]
    assert f'<a href="/evaluation/suites/{sentiment.id}/">sentiment</a>: accuracy' in html
    # the select offers the suite both runs share first, the other with how many runs have it
    options = re.findall(r'<option value="(\d+)">([^<]*)</option>', html.split('id="outputs-suite"')[1])
    assert options[:2] == [(str(qa.id), "qa"), (str(sentiment.id), "sentiment (1 of 2 runs)")]
    data = json.loads(re.search(r'<script id="compare-evaluation" type="application/json">(.*?)</script>', html,
                                re.S).group(1))
    assert data["suites"][0]["values"] == {str(two[0].id): pytest.approx(2 / 3), str(two[1].id): 0.3333333}


def test_the_row_is_the_final_adapters_latest_succeeded_evaluation_only(member_client, world, two):
    qa = make_suite(world.team)
    evaluated(qa, two[0], ["4", "x", "x"])
    evaluated(qa, two[0], ["4", "Paris", "blue"])  # the latest: 1.0
    evaluated(qa, two[0], ["x", "x", "x"], status=Evaluation.Status.FAILED)  # newer, but failed
    evaluated(qa, two[1], ["4", "Paris", "blue"], checkpoint_step=10)  # a checkpoint, not the final adapter
    evaluated(qa, two[1], ["4", "Paris", "blue"], adapters="off")  # adapters disabled: the drift check's
    evaluated(qa, None, ["4", "Paris", "blue"])  # the base model is no run's row
    html = member_client.get(f"/compare/?runs={ids(two)}").content.decode()
    assert outcome_cells(html, f"suite_{qa.id}") == ["1", "—"]


def test_an_lm_eval_suite_shows_its_tasks_first_metric(member_client, world, two):
    task = "task: tiny_qa\noutput_type: generate_until\nmetric_list:\n  - metric: exact_match\n  - metric: bleu\n"
    harness = make_suite(world.team, "tiny_qa", metric="lm_eval", task_config=task)
    evaluated(harness, two[0], ["4", "x", "x"], figures={"bleu": 12.5, "exact_match": 0.25, "exact_match_stderr": 0.1,
                                                         "examples": 3})
    html = member_client.get(f"/compare/?runs={ids(two)}").content.decode()
    assert outcome_cells(html, f"suite_{harness.id}") == ["0.25", "—"]
    assert "tiny_qa</a>: exact_match" in html


def test_no_evaluation_says_how_to_get_one_and_loads_no_outputs_script(member_client, two):
    html = member_client.get(f"/compare/?runs={ids(two)}").content.decode()
    assert 'class="outcome-row suite-row"' not in html
    assert "evaluate the runs from their pages" in html and "compare_outputs.js" not in html


# The outputs endpoint -----------------------------------------------------------------------------------------

def test_outputs_for_the_same_prompts_beside_the_base_model_with_differences_flagged(member_client, world, two):
    qa = make_suite(world.team)
    base = evaluated(qa, None, ["4", "Paris", "grey"])
    evaluated(qa, two[0], ["4", "Paris", "blue"])
    evaluated(qa, two[1], ["5", "Paris", "grey"])
    body = member_client.get(f"/compare/outputs/?runs={ids(two)}&suite={qa.id}").json()
    assert body["suite"] == {"id": qa.id, "name": "qa", "metric": "exact_match", "label": "exact match"}
    assert body["base"]["evaluation"] == base.id and body["base"]["model"] == "tiny-model"
    assert body["compared_to"] == "base"
    assert [r["id"] for r in body["runs"]] == [two[0].id, two[1].id]
    assert body["runs"][0]["figure"] == {"name": "exact_match", "label": "exact match", "value": 1.0}
    assert (body["total"], body["offset"], body["next_offset"]) == (3, 0, None)
    assert [(row["index"], row["prompt"], row["reference"]) for row in body["rows"]] == [
        (0, "2+2=", "4"), (1, "Capital of France?", "Paris"), (2, "Colour of the sky?", "blue")]
    assert [row["base"]["output"] for row in body["rows"]] == ["4", "Paris", "grey"]
    table = [[(o["output"], o["score"], o["differs"]) for o in row["outputs"]] for row in body["rows"]]
    assert table == [[("4", 1.0, False), ("5", 0.0, True)],
                     [("Paris", 1.0, False), ("Paris", 1.0, False)],
                     [("blue", 1.0, True), ("grey", 0.0, False)]]


def test_the_base_model_must_match_the_runs_model_and_decoding_else_the_first_run_is_the_reference(
        member_client, world, two):
    qa = make_suite(world.team)
    evaluated(qa, None, ["4", "Paris", "blue"], decoding={**DECODING, "temperature": 0.7})  # other decoding
    evaluated(qa, None, ["4", "Paris", "blue"], model="another-model")
    evaluated(qa, None, ["4", "Paris", "blue"], status=Evaluation.Status.RUNNING, figures={})
    evaluated(qa, two[0], ["4", "Lyon", "blue"])
    evaluated(qa, two[1], ["4", "Paris", "blue"])
    body = member_client.get(f"/compare/outputs/?runs={ids(two)}&suite={qa.id}").json()
    assert body["base"] is None and body["compared_to"] == two[0].id
    assert [[o["differs"] for o in row["outputs"]] for row in body["rows"]] == [
        [False, False], [False, True], [False, False]]


def test_a_run_not_evaluated_on_the_suite_has_no_outputs(member_client, world, two):
    qa = make_suite(world.team)
    evaluated(qa, two[1], ["4", "Paris", "blue"])
    body = member_client.get(f"/compare/outputs/?runs={ids(two)}&suite={qa.id}").json()
    assert body["runs"][0]["evaluation"] is None and body["runs"][0]["figure"] is None
    assert all(row["outputs"][0] is None and row["outputs"][1]["differs"] is False for row in body["rows"])


def test_a_large_suite_comes_a_page_at_a_time(member_client, world, two):
    prompts = [(f"question {i}", f"answer {i}") for i in range(120)]
    big = make_suite(world.team, "big", rows=len(prompts))
    evaluated(big, None, [r for _, r in prompts], prompts=prompts)
    for run in two:
        evaluated(big, run, [r if i % 7 else "wrong" for i, (_, r) in enumerate(prompts)], prompts=prompts)
    first = member_client.get(f"/compare/outputs/?runs={ids(two)}&suite={big.id}").json()
    assert (first["total"], first["limit"], len(first["rows"]), first["next_offset"]) == (120, 50, 50, 50)
    last = member_client.get(f"/compare/outputs/?runs={ids(two)}&suite={big.id}&offset=100&limit=50").json()
    assert [row["index"] for row in last["rows"]] == list(range(100, 120)) and last["next_offset"] is None
    assert last["rows"][5]["prompt"] == "question 105" and last["rows"][5]["outputs"][0]["differs"] is True


def test_a_sweep_compares_its_members_outputs(member_client, world, two):
    sweep = Sweep.objects.create(team=world.team, name="ranks", template="r", dataset=world.dataset, queue="gpu")
    Run.objects.filter(id__in=[r.id for r in two]).update(sweep=sweep)
    qa = make_suite(world.team)
    for run in two:
        evaluated(qa, run, ["4", "Paris", "blue"])
    body = member_client.get(f"/compare/outputs/?sweep={sweep.id}&suite={qa.id}").json()
    assert [r["id"] for r in body["runs"]] == [r.id for r in two]


def test_another_teams_suite_or_run_is_a_404(member_client, world, two):
    qa = make_suite(world.team)
    theirs = make_suite(world.other_team, "theirs")
    evaluated(theirs, world.other_run, ["4", "Paris", "blue"])
    for url in (f"/compare/outputs/?runs={ids(two)}&suite={theirs.id}",
                f"/compare/outputs/?runs={two[0].id},{world.other_run.id}&suite={qa.id}",
                f"/compare/outputs/?runs={ids(two)}&suite=987654321",
                f"/compare/outputs/?runs={ids(two)}&suite=99999999999999999999999"):
        assert member_client.get(url).status_code == 404, url


@pytest.mark.parametrize("query, field, words", [
    ("runs={a},{b}", "suite", "no eval suite chosen"),
    ("runs={a},{b}&suite=qa", "suite", "'qa' is not an eval suite id"),
    ("runs={a}&suite={s}", "runs", "choose at least 2"),
    ("runs={a},x&suite={s}", "runs", "'x' is not a run id"),
    ("sweep=abc&suite={s}", "sweep", "'abc' is not a sweep id"),
    ("runs={a},{b}&suite={s}&offset=-5", "offset", "'-5' is not a whole number"),
    ("runs={a},{b}&suite={s}&limit=0", "limit", "0 is out of range"),
    ("runs={a},{b}&suite={s}&limit=5000", "limit", "5000 is out of range"),
])
def test_bad_input_is_a_400_naming_the_field(member_client, world, two, query, field, words):
    qa = make_suite(world.team)
    response = member_client.get("/compare/outputs/?" + query.format(a=two[0].id, b=two[1].id, s=qa.id))
    assert response.status_code == 400
    body = response.json()
    assert body["field"] == field and words in body["error"] and body["allowed"]


def test_logged_out_is_sent_to_log_in(client, world, two):
    qa = make_suite(world.team)
    response = client.get(f"/compare/outputs/?runs={ids(two)}&suite={qa.id}")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_a_1000_prompt_suite_is_read_in_a_few_queries_whatever_the_runs(member_client, world, two,
                                                                       django_assert_max_num_queries):
    prompts = [(f"question {i}", f"answer {i}") for i in range(1000)]
    big = make_suite(world.team, "big", rows=len(prompts))
    runs = [*two, named_run(world.team, world.member, world.dataset, "rank 4", r=4)]
    evaluated(big, None, [r for _, r in prompts], prompts=prompts)
    for run in runs:
        evaluated(big, run, [r for _, r in prompts], prompts=prompts)
    with django_assert_max_num_queries(11):
        body = member_client.get(f"/compare/outputs/?runs={ids(runs)}&suite={big.id}&offset=950").json()
    assert body["total"] == 1000 and len(body["rows"]) == 50 and body["rows"][-1]["index"] == 999
    with django_assert_max_num_queries(13):  # the whole page (its series read by psycopg, not counted)
        assert member_client.get(f"/compare/?runs={ids(runs)}").status_code == 200
