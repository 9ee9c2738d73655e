"""Eval suites and evaluations on the real database, workers and tiny model: a run evaluated at its end on a suite,
the base model's evaluation done once and reused, and bad input refused with nothing changed."""
import io
import json

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError

from tests.factories import idle_queue, make_member, make_team, tiny_overrides
from tests.integration.conftest import wait_for, wait_terminal
from tests.workers import start_worker, stop_worker
from training.evaluation import services
from training.models import EvalExample, EvalSuite, Evaluation, Run
from training.runs import services as runs

pytestmark = pytest.mark.django_db(transaction=True)

ROWS = [{"prompt": f"What colour is thing {i}? Answer:", "reference": "red" if i % 2 else "blue"} for i in range(6)]


def jsonl(rows) -> io.BytesIO:
    return io.BytesIO("".join(json.dumps(r) + "\n" for r in rows).encode())


def make_suite(team, user, *, rows=ROWS, name="colours", metric="classification", labels=("red", "blue"),
               filename="suite.jsonl", **kw) -> EvalSuite:
    return services.suite_create_from_upload(team=team, user=user, name=name, file=jsonl(rows), filename=filename,
                                             metric=metric, labels=list(labels) if labels else None,
                                             max_new_tokens=kw.pop("max_new_tokens", 4), **kw)


@pytest.fixture
def cpu_worker(tmp_path):
    worker = start_worker(queue=settings.TUNEBOARD_CPU_QUEUE, name=f"cpu-{tmp_path.name}@test",
                          log=tmp_path / "cpu-worker.log")
    yield worker
    stop_worker(worker)


def wait_evaluation(evaluation: Evaluation, timeout: float = 180) -> Evaluation:
    wait_for(lambda: Evaluation.objects.get(id=evaluation.id).is_terminal, timeout=timeout,
             what=f"evaluation {evaluation.id} to end")
    evaluation.refresh_from_db()
    return evaluation


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_run_is_evaluated_at_its_end_and_the_base_model_once(celery_worker, cpu_worker, tiny_model, team_member):
    team, user, dataset = team_member
    suite = make_suite(team, user)
    assert suite.rows == 6 and suite.format == "prompt_completion"
    run = runs.run_create(team=team, user=user, dataset=dataset, overrides=tiny_overrides(tiny_model, max_steps=10),
                          eval_suites=[suite])
    run = wait_terminal(run)
    assert run.status == Run.Status.SUCCEEDED, run.error
    wait_for(lambda: Evaluation.objects.filter(run=run).exists(), timeout=60, what="the run's evaluation")
    evaluation = wait_evaluation(Evaluation.objects.get(run=run))
    assert evaluation.status == Evaluation.Status.SUCCEEDED, evaluation.error
    assert evaluation.adapter_path == run.adapter_path and evaluation.worker_name == celery_worker.name
    examples = list(EvalExample.objects.filter(evaluation=evaluation).order_by("index"))
    assert [e.index for e in examples] == list(range(6)) and [e.reference for e in examples][:2] == ["blue", "red"]
    assert all(e.score in (0.0, 1.0) for e in examples)
    figures = evaluation.figures
    assert figures["examples"] == 6 and figures["accuracy"] == sum(e.score for e in examples) / 6
    assert {"macro_f1", "minority_class", "minority_recall"} <= set(figures)
    assert evaluation.examples_per_s > 0

    base = services.evaluation_create(suite=suite, user=user, team=team, model=tiny_model, queue=celery_worker.queue)
    base = wait_evaluation(base)
    assert base.status == Evaluation.Status.SUCCEEDED, base.error
    again = services.evaluation_create(suite=suite, user=user, team=team, model=tiny_model,
                                       queue=celery_worker.queue)
    assert again.id == base.id and Evaluation.objects.filter(run__isnull=True).count() == 1


def counts():
    return EvalSuite.objects.count(), Evaluation.objects.count(), EvalExample.objects.count()


@pytest.mark.parametrize("kw, field, says", [
    ({"rows": [{"prompt": "x"}]}, "format", "match no single format"),
    ({"rows": [{"prompt": "a", "reference": "red"}, {"prompt": "b", "reference": 3}]}, "file", "row 2"),
    ({"rows": [{"text": "no answer here"}]}, "file", "no reference answer"),
    ({"metric": "bleu", "labels": None}, "metric", "unknown metric 'bleu'"),
    ({"labels": ("red", "green")}, "file", "row 1: reference 'blue' is not one of the labels"),
    ({"filename": "suite.txt"}, "file", ".txt"),
])
def test_a_malformed_suite_or_an_unknown_metric_is_refused_and_saves_nothing(team_member, kw, field, says):
    team, user, _ = team_member
    before = counts()
    with pytest.raises(ValidationError) as exc:
        make_suite(team, user, **kw)
    assert field in exc.value.message_dict, exc.value.message_dict
    assert says in " ".join(exc.value.message_dict[field]), exc.value.message_dict
    assert counts() == before and not list((settings.SUITES_DIR / str(team.id)).glob("*.jsonl"))


def test_another_teams_suite_or_a_prompt_longer_than_the_context_is_refused(team_member, tiny_model):
    team, user, dataset = team_member
    other = make_team()
    theirs = make_suite(other, make_member(other))
    before = counts()
    with pytest.raises(ValidationError) as exc:
        services.evaluation_create(suite=theirs, user=user, team=team, model=tiny_model, queue=idle_queue())
    assert exc.value.message_dict == {"suite": ["no such eval suite in this team"]}
    long = make_suite(team, user, name="long", rows=[{"prompt": "word " * 3000, "reference": "red"}])
    with pytest.raises(ValidationError) as exc:
        services.evaluation_create(suite=long, user=user, team=team, model=tiny_model, queue=idle_queue())
    assert "row 1: its prompt is" in exc.value.message_dict["suite"][0]
    assert "exceeds the model's context" in exc.value.message_dict["suite"][0]
    with pytest.raises(ValidationError) as exc:
        services.evaluation_create(suite=long, user=user, team=team, model=tiny_model, queue=idle_queue(),
                                   decoding={"temperature": 9, "beams": 2})
    assert set(exc.value.message_dict) == {"beams"}
    assert counts()[1:] == before[1:]


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_the_base_drift_check_finds_no_drift_for_bias_none_and_drift_for_bias_all(
        celery_worker, tiny_qwen_model, team_member):
    from training.evaluation import drift

    team, user, dataset = team_member
    suite = make_suite(team, user, metric="rouge_l", labels=None, max_new_tokens=8,
                       rows=[{"prompt": f"What colour is thing {i}? Say it 2 times.", "reference": "red red"}
                             for i in range(4)])
    runs_by_bias = {bias: runs.run_create(team=team, user=user, dataset=dataset, overrides=tiny_overrides(
        tiny_qwen_model, max_steps=12, learning_rate=2e-2, bias=bias)) for bias in ("none", "all")}
    for bias, run in runs_by_bias.items():
        run = wait_terminal(run)
        assert run.status == Run.Status.SUCCEEDED, run.error
        checks = services.drift_check_create(run=run, suite=suite, user=user)
        for evaluation in checks.values():
            assert wait_evaluation(evaluation).status == Evaluation.Status.SUCCEEDED, evaluation.error
    none, all_ = (drift.drift_for(runs_by_bias[b], suite) for b in ("none", "all"))
    assert none["changed"] == [] and none["drift"] == 0 and none["as_expected"], none
    assert "left the base weights untouched" in none["text"]
    assert none["base_evaluation"] == all_["base_evaluation"]  # the base model evaluated once for both
    assert all_["changed"] and all_["drift"] > 0 and all_["as_expected"], all_
    assert 'bias "all" trained the base model\'s own biases' in all_["text"]


def test_the_loftq_check_is_refused_without_a_gpu_worker_and_queued_to_one(team_member, tiny_model):
    from training.evaluation import loftq
    from training.models import LoftqCheck, Worker

    team, user, dataset = team_member
    queue = idle_queue()
    config = tiny_overrides(tiny_model, loftq_config={"loftq_bits": 4, "loftq_iter": 2})
    Worker.objects.create(name=f"cpu-box@{queue}", hostname="cpu-box", queues=[queue], gpus=[])
    with pytest.raises(ValidationError) as exc:
        loftq.loftq_check_create(team=team, user=user, dataset=dataset, config=config, queue=queue)
    message = exc.value.message_dict["queue"][0]
    assert "needs a CUDA GPU" in message and f"no live worker of queue {queue!r} reported a GPU" in message
    assert not LoftqCheck.objects.exists()

    Worker.objects.create(name=f"gpu-box@{queue}", hostname="gpu-box", queues=[queue],
                          gpus=[{"name": "NVIDIA H200", "memory_total": 143771}])
    check = loftq.loftq_check_create(team=team, user=user, dataset=dataset, config=config, queue=queue)
    assert check.status == LoftqCheck.Status.QUEUED and check.spec["loftq"] == [[4, 2]]
    assert check.spec["target_modules"] and check.spec["samples"] == 16


TASK = """task: team_colours
output_type: multiple_choice
doc_to_text: "{{question}} Answer:"
doc_to_choice: "{{choices}}"
doc_to_target: label
metric_list:
  - metric: acc
"""
DOCS = [{"question": f"What colour is thing {i}?", "choices": ["red", "blue"], "label": i % 2} for i in range(6)]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_an_lm_eval_task_from_local_files_runs_end_to_end_on_the_tiny_model(celery_worker, tiny_model, team_member):
    team, user, _ = team_member
    suite = services.suite_create_from_upload(team=team, user=user, name="harness", file=jsonl(DOCS),
                                              filename="docs.jsonl", metric="lm_eval", task_config=TASK)
    assert suite.format == EvalSuite.Format.HARNESS and suite.rows == 6
    evaluation = services.evaluation_create(suite=suite, user=user, team=team, model=tiny_model,
                                            queue=celery_worker.queue)
    evaluation = wait_evaluation(evaluation)
    assert evaluation.status == Evaluation.Status.SUCCEEDED, evaluation.error
    examples = list(EvalExample.objects.filter(evaluation=evaluation).order_by("index"))
    assert [e.index for e in examples] == list(range(6)) and all(e.score in (0.0, 1.0) for e in examples)
    assert examples[0].prompt == "What colour is thing 0? Answer:" and examples[0].reference == "0"
    assert evaluation.figures["acc"] == pytest.approx(sum(e.score for e in examples) / 6)
    assert "acc_stderr" in evaluation.figures and evaluation.figures["examples"] == 6


@pytest.mark.parametrize("task, says", [
    ("task: x\noutput_type: guess\ndoc_to_text: a\ndoc_to_target: b", "output_type: one of multiple_choice"),
    ("task: x\noutput_type: multiple_choice\ndoc_to_text: !function utils.f\ndoc_to_target: b", "!function"),
    (TASK + "dataset_path: hellaswag\n", "dataset_path: set by Tuneboard"),
    ("- a list", "must be a mapping"),
])
def test_a_bad_task_yaml_is_refused_and_saves_nothing(team_member, task, says):
    team, user, _ = team_member
    with pytest.raises(ValidationError) as exc:
        services.suite_create_from_upload(team=team, user=user, name="harness", file=jsonl(DOCS),
                                          filename="docs.jsonl", metric="lm_eval", task_config=task)
    assert says in exc.value.message_dict["task_config"][0]
    assert not EvalSuite.objects.exists()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_each_checkpoint_is_evaluated_when_the_run_asks(celery_worker, cpu_worker, tiny_model, team_member):
    team, user, dataset = team_member
    suite = make_suite(team, user)
    with pytest.raises(ValidationError) as exc:
        runs.run_create(team=team, user=user, dataset=dataset, overrides=tiny_overrides(tiny_model),
                        eval_checkpoints=True)
    assert "choose the suites" in exc.value.message_dict["eval_checkpoints"][0]
    run = runs.run_create(team=team, user=user, dataset=dataset, eval_suites=[suite], eval_checkpoints=True,
                          overrides=tiny_overrides(tiny_model, max_steps=10, save_steps=5))
    assert wait_terminal(run).status == Run.Status.SUCCEEDED, run.error
    wait_for(lambda: Evaluation.objects.filter(run=run).count() == 3, timeout=60,
             what="evaluations of checkpoints 5 and 10 and of the final adapter")
    for evaluation in Evaluation.objects.filter(run=run):
        assert wait_evaluation(evaluation).status == Evaluation.Status.SUCCEEDED, evaluation.error
    assert sorted(Evaluation.objects.filter(run=run).values_list("checkpoint_step", flat=True),
                  key=lambda s: -1 if s is None else s) == [None, 5, 10]
