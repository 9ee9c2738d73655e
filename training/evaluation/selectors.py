"""Reads of evaluation, scoped to the user's teams: the suites, a suite's examples and evaluations, and a run's
evaluations with their headline figures and the examples they got wrong beside the base model's outputs."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from django.db.models import QuerySet
from django.http import Http404

from training import access
from training.models import EvalExample, EvalSuite, Evaluation, Run

# The wrong examples a run page lists per evaluation: enough to read, not a 1,000-row page.
WRONG_SHOWN = 50
# What a classification suite's row shows, in order: (figure, label).
CLASSIFICATION_FIGURES = (("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("minority_recall", "minority recall"))
METRIC_LABELS = {"exact_match": "exact match", "contains": "contains",
                 "normalized_exact_match": "normalised exact match", "rouge_l": "ROUGE-L"}


def suite_list_for(user, *, team=None) -> QuerySet[EvalSuite]:
    suites = EvalSuite.objects.filter(team_id__in=access.team_ids_for(user)).select_related("team", "created_by")
    return suites.filter(team=team) if team is not None else suites


def get_suite_for_user(user, suite_id: int) -> EvalSuite:
    """The suite if it is one of the user's teams'; another team's is a 404, exactly like a missing one."""
    suite = suite_list_for(user).filter(id=suite_id).first()
    if suite is None:
        raise Http404("No such eval suite")
    return suite


def headline(evaluation: Evaluation) -> list[dict[str, Any]]:
    """The figures a row shows: the metric's value, or accuracy, macro-F1 and minority recall for classification."""
    figures = evaluation.figures or {}
    if evaluation.suite.metric == "classification":
        out = [{"name": name, "label": label, "value": figures.get(name)} for name, label in CLASSIFICATION_FIGURES
               if name in figures]
        if out and figures.get("minority_class"):
            out[-1]["label"] = f"recall of {figures['minority_class']!s} (minority)"
        return out
    metric = evaluation.suite.metric
    label = METRIC_LABELS.get(metric, metric)
    return [{"name": metric, "label": label, "value": figures[metric]}] if metric in figures else []


def what_of(evaluation: Evaluation) -> str:
    """final, checkpoint 40, base model; with ", adapters off" when they were disabled."""
    if evaluation.run_id is None:
        return "base model"
    where = "final" if evaluation.checkpoint_step is None else f"checkpoint {evaluation.checkpoint_step}"
    return where if evaluation.adapters == "on" else f"{where}, adapters off"


def evaluation_row(evaluation: Evaluation) -> dict[str, Any]:
    """One evaluation as a page or its JSON shows it (without examples)."""
    return {
        "id": evaluation.id, "suite": evaluation.suite.name, "suite_id": evaluation.suite_id,
        "metric": evaluation.suite.metric, "run_id": evaluation.run_id, "model": evaluation.model,
        "queue": evaluation.queue,
        "what": what_of(evaluation), "checkpoint_step": evaluation.checkpoint_step, "adapters": evaluation.adapters,
        "status": evaluation.status, "status_display": evaluation.get_status_display(),
        "is_terminal": evaluation.is_terminal, "figures": evaluation.figures or {}, "headline": headline(evaluation),
        "examples": (evaluation.figures or {}).get("examples"), "examples_per_s": evaluation.examples_per_s,
        "error": evaluation.error.splitlines()[0] if evaluation.error else "", "decoding": evaluation.decoding,
        "created_at": evaluation.created_at,
    }


def suite_evaluations(suite: EvalSuite) -> list[dict[str, Any]]:
    """Every evaluation of the suite, newest first: runs' and the base models'."""
    evaluations = suite.evaluations.select_related("suite", "run").order_by("-created_at", "-id")
    return [{**evaluation_row(e), "run_name": e.run.name if e.run_id else ""} for e in evaluations]


def run_checkpoint_steps(run: Run) -> list[int]:
    """The steps of the checkpoints the run saved (artifact_dir/checkpoints/checkpoint-N with an adapter)."""
    if not run.artifact_dir:
        return []
    folder = Path(run.artifact_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    steps = []
    for path in folder.glob("checkpoint-*"):
        step = path.name.removeprefix("checkpoint-")
        if step.isdigit() and (path / "adapter_config.json").is_file():
            steps.append(int(step))
    return sorted(steps)


def base_evaluation_for(evaluation: Evaluation) -> Evaluation | None:
    """The base model's evaluation of the same suite with the same decoding, if one exists (newest first)."""
    return (Evaluation.objects.select_related("suite")
            .filter(team_id=evaluation.team_id, run__isnull=True, suite_id=evaluation.suite_id,
                    model=evaluation.model, decoding=evaluation.decoding)
            .exclude(status=Evaluation.Status.FAILED).order_by("-created_at", "-id").first())


def wrong_examples(evaluation: Evaluation, base: Evaluation | None, *, limit: int = WRONG_SHOWN
                   ) -> list[dict[str, Any]]:
    """The examples scored below 1, in suite order, each with the base model's output for the same prompt."""
    wrong = list(evaluation.examples.filter(score__lt=1).order_by("index")[:limit])
    base_by_index: dict[int, EvalExample] = {}
    if base is not None and base.status == Evaluation.Status.SUCCEEDED:
        base_by_index = {e.index: e for e in base.examples.filter(index__in=[w.index for w in wrong])}
    out = []
    for example in wrong:
        beside = base_by_index.get(example.index)
        out.append({"index": example.index, "prompt": example.prompt, "reference": example.reference,
                    "output": example.output, "score": example.score, "label": example.label,
                    "base_output": beside.output if beside else None, "base_label": beside.label if beside else "",
                    "base_score": beside.score if beside else None})
    return out


def run_evaluations(run: Run, *, with_examples: bool = True) -> list[dict[str, Any]]:
    """The run's evaluations newest first: figures, the matching base-model evaluation's figures, and (when asked)
    the examples it got wrong."""
    out = []
    for evaluation in run.evaluations.select_related("suite").order_by("-created_at", "-id"):
        row = evaluation_row(evaluation)
        base = base_evaluation_for(evaluation)
        row["base"] = evaluation_row(base) if base is not None else None
        if with_examples:
            row["wrong"] = wrong_examples(evaluation, base) if evaluation.status == Evaluation.Status.SUCCEEDED else []
            row["wrong_count"] = evaluation.examples.filter(score__lt=1).count() if row["wrong"] else 0
        out.append(row)
    return out


def run_pending_suites(run: Run) -> list[EvalSuite]:
    """The suites the run is to be evaluated on at its end that have no final evaluation yet (none while a run that
    ended otherwise than succeeding will never get one)."""
    if run.is_terminal and run.status != Run.Status.SUCCEEDED:
        return []
    done = run.evaluations.filter(checkpoint_step__isnull=True, adapters="on").values_list("suite_id", flat=True)
    return list(run.eval_suites.exclude(id__in=list(done)).order_by("name"))


def run_evaluation_state(run: Run, *, with_examples: bool = True) -> dict[str, Any]:
    """The run page's evaluation section: its evaluations, the suites still to come at the end, and whether the
    page should keep polling (something queued or running, or still to be created)."""
    evaluations = run_evaluations(run, with_examples=with_examples)
    pending = run_pending_suites(run)
    active = bool(pending) or any(not e["is_terminal"] or (e["base"] and not e["base"]["is_terminal"])
                                  for e in evaluations)
    return {"evaluations": evaluations, "pending_suites": [{"id": s.id, "name": s.name} for s in pending],
            "active": active}


# The Compare page's evaluation: a figure per run and suite, and the same prompts' outputs side by side ----------

# The prompts one request of the side-by-side table returns at most: a 1,000-prompt suite is read a page at a time.
COMPARE_OUTPUTS_PAGE, COMPARE_OUTPUTS_MAX = 50, 200


def headline_figure(evaluation: Evaluation) -> dict[str, Any] | None:
    """The one figure a compare row shows: the metric's value, accuracy for classification, or an lm-eval task's
    first metric (its metric_list's first, else the first of its figures by name)."""
    figures = evaluation.figures or {}
    if evaluation.suite.metric == "lm_eval":
        names = [name for name in _task_metric_names(evaluation.suite) if isinstance(figures.get(name), (int, float))]
        names = names or sorted(name for name, value in figures.items() if name != "examples"
                                and not name.endswith("_stderr") and isinstance(value, (int, float)))
        return {"name": names[0], "label": names[0], "value": figures[names[0]]} if names else None
    shown = headline(evaluation)
    return shown[0] if shown else None


def _task_metric_names(suite: EvalSuite) -> list[str]:
    try:
        task = yaml.safe_load(suite.task_config or "") or {}
    except yaml.YAMLError:
        return []
    listed = task.get("metric_list") if isinstance(task, dict) else None
    return [m["metric"] for m in listed or [] if isinstance(m, dict) and isinstance(m.get("metric"), str)]


def compare_final_evaluations(runs: list[Run]) -> dict[int, dict[int, Evaluation]]:
    """suite id → run id → the run's latest succeeded evaluation of its final adapter with adapters on."""
    latest: dict[int, dict[int, Evaluation]] = {}
    evaluations = (Evaluation.objects.select_related("suite")
                   .filter(run__in=runs, checkpoint_step__isnull=True, adapters="on",
                           status=Evaluation.Status.SUCCEEDED).order_by("-created_at", "-id"))
    for evaluation in evaluations:
        latest.setdefault(evaluation.suite_id, {}).setdefault(evaluation.run_id, evaluation)
    return latest


def compare_suite_figures(runs: list[Run]) -> list[dict[str, Any]]:
    """One entry per suite any compared run was evaluated on, the suites every run has first, then by name: its
    figure's label and each run's value (None where the run has none)."""
    out = []
    for by_run in compare_final_evaluations(runs).values():
        suite = next(iter(by_run.values())).suite
        figures = {run.id: headline_figure(by_run[run.id]) if run.id in by_run else None for run in runs}
        named = next((f for f in figures.values() if f), None)
        label = named["label"] if named else METRIC_LABELS.get(suite.metric, suite.metric)
        out.append({"id": suite.id, "name": suite.name, "metric": suite.metric, "label": label,
                    "key": f"suite_{suite.id}", "runs_evaluated": len(by_run), "shared": len(by_run) == len(runs),
                    "values": [(run.id, figures[run.id]["value"] if figures[run.id] else None) for run in runs]})
    return sorted(out, key=lambda s: (not s["shared"], s["name"].casefold(), s["id"]))


def compare_base_evaluation(anchor: Evaluation) -> Evaluation | None:
    """The succeeded base-model evaluation beside a run's: run empty, the same team, model, suite and decoding."""
    return (Evaluation.objects.select_related("suite")
            .filter(team_id=anchor.team_id, run__isnull=True, suite_id=anchor.suite_id,
                    model=anchor.model, decoding=anchor.decoding, status=Evaluation.Status.SUCCEEDED)
            .order_by("-created_at", "-id").first())


def _shown_example(example: EvalExample | None) -> dict[str, Any] | None:
    if example is None:
        return None
    return {"output": example.output, "score": example.score, "label": example.label}


def compare_outputs(runs: list[Run], suite: EvalSuite, *, offset: int = 0, limit: int = COMPARE_OUTPUTS_PAGE
                    ) -> dict[str, Any]:
    """The suite's prompts, a page of them in suite order, with each compared run's output (its final adapter's
    latest succeeded evaluation) and the base model's for the first evaluated run's model and decoding. An output
    `differs` when it is not the base model's, or with no base model, not the first evaluated run's."""
    by_run = compare_final_evaluations(runs).get(suite.id, {})
    evaluated = [run for run in runs if run.id in by_run]
    anchor = by_run[evaluated[0].id] if evaluated else None
    base = compare_base_evaluation(anchor) if anchor else None
    ids = [e.id for e in by_run.values()] + ([base.id] if base else [])
    indices = EvalExample.objects.filter(evaluation_id__in=ids).values_list("index", flat=True).distinct()
    total = indices.count()
    page = list(indices.order_by("index")[offset:offset + limit])
    examples: dict[tuple[int, int], EvalExample] = {
        (e.evaluation_id, e.index): e for e in EvalExample.objects.filter(evaluation_id__in=ids, index__in=page)}
    rows = []
    for index in page:
        beside = examples.get((base.id, index)) if base else None
        against = beside if base else examples.get((anchor.id, index))
        first = next(examples[(i, index)] for i in ids if (i, index) in examples)
        outputs = []
        for run in runs:
            example = examples.get((by_run[run.id].id, index)) if run.id in by_run else None
            shown = _shown_example(example)
            if shown is not None:
                shown["differs"] = against is not None and example.output != against.output
            outputs.append(shown)
        rows.append({"index": index, "prompt": first.prompt, "reference": first.reference,
                     "base": _shown_example(beside), "outputs": outputs})
    return {
        "suite": {"id": suite.id, "name": suite.name, "metric": suite.metric,
                  "label": METRIC_LABELS.get(suite.metric, suite.metric)},
        "base": {"evaluation": base.id, "model": base.model, "figure": headline_figure(base)} if base else None,
        "compared_to": "base" if base else (evaluated[0].id if evaluated else None),
        "runs": [{"id": run.id, "name": run.name,
                  "evaluation": by_run[run.id].id if run.id in by_run else None,
                  "figure": headline_figure(by_run[run.id]) if run.id in by_run else None} for run in runs],
        "rows": rows, "total": total, "offset": offset, "limit": limit,
        "next_offset": offset + limit if offset + limit < total else None,
    }
