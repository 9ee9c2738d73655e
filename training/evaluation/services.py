"""Every write to evaluation: eval suites uploaded and checked like datasets, evaluations created (a run's adapter,
a checkpoint, adapters disabled, or the base model once per model, suite and decoding) and queued to the run's GPU
queue, executed by a worker in a child process, and scored."""
from __future__ import annotations

import hashlib
import io
import json
import logging
import sys
import traceback
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from dashboard.models import Membership, Team
from training.access import require_role
from training.datasets import files
from training.datasets.services import DatasetFileError, upload_store
from training.engine import harness
from training.engine.config import text_problem
from training.engine.evaluate import SpecError, parse_spec
from training.evaluation import metrics
from training.jobs import job_claim, job_enqueue
from training.models import EvalExample, EvalSuite, Evaluation, Run
from training.runs.process import TrainingProcess
from training.runs.services import sweep_advance_enqueue

log = logging.getLogger(__name__)
Role = Membership.Role
Status = Evaluation.Status
DECODING = ("max_new_tokens", "temperature", "top_p", "seed")
# "prompt" + "reference" columns are a prompt/completion suite whose completion is the reference.
REFERENCE_MAPPING = files.Mapping("prompt_completion", {"prompt": "prompt", "completion": "reference"})


# Suites ----------------------------------------------------------------------------------------------------------

def suite_examples(suite: EvalSuite) -> list[dict[str, Any]]:
    """The suite's examples: {index, prompt (text) or messages (the conversation before the answer), reference}."""
    out = []
    with open(suite.path, encoding="utf-8") as fh:
        for index, line in enumerate(line for line in fh if line.strip()):
            row = json.loads(line)
            if "messages" in row:
                *before, answer = row["messages"]
                out.append({"index": index, "messages": before, "reference": answer["content"]})
            else:
                out.append({"index": index, "prompt": row["prompt"], "reference": row["completion"]})
    return out


def prompt_of(example: dict[str, Any]) -> str:
    """The prompt as the pages show it: a chat's turns one per line."""
    if "messages" in example:
        return "\n".join(f"{m['role']}: {m['content']}" for m in example["messages"])
    return example["prompt"]


def suite_create_from_upload(*, team: Team, user, name: str, file: IO[bytes], metric: str,
                             labels: list[str] | None = None, max_new_tokens: int = 64,
                             filename: str | None = None, task_config: str = "") -> EvalSuite:
    """Check the file row by row (prompt + reference columns, prompt/completion, instruction rows, or chats ending in
    the assistant's reference answer) and the metric; nothing is saved on an error, which names the row or field.
    With metric lm_eval the file is an lm-evaluation-harness task's documents and task_config its YAML."""
    require_role(user=user, team=team, role=Role.MEMBER, action="Adding an eval suite")
    name = (name or "").strip()
    if not name or len(name) > 200:
        raise ValidationError({"name": "give the suite a name of at most 200 characters"})
    if problem := text_problem(name):
        raise ValidationError({"name": problem})
    if EvalSuite.objects.filter(team=team, name=name).exists():
        raise ValidationError({"name": f"team {team.name} already has an eval suite called {name!r}"})
    labels = [str(label) for label in labels or []]
    try:
        metrics.check_metric(metric, labels)
    except metrics.MetricError as exc:
        raise ValidationError({exc.field: exc.message}) from None
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= 4096:
        raise ValidationError({"max_new_tokens": "an integer from 1 to 4096"})
    filename = filename or getattr(file, "name", None) or "suite.jsonl"
    if metric == metrics.HARNESS:
        return _harness_suite_create(team=team, user=user, name=name, file=file, filename=filename,
                                     task_config=task_config)
    if task_config:
        raise ValidationError({"task_config": "a task YAML is for the lm_eval metric only"})
    mapping = _suite_mapping(file, filename)
    checked, path, sha, _, _ = upload_store(file=file, filename=filename, mapping=mapping,
                                            folder=settings.SUITES_DIR / str(team.id))
    try:
        if checked.format == "text":
            raise ValidationError({"file": "plain text rows have no reference answer; give prompt and reference "
                                           "columns, prompt/completion, or chats that end with the answer"})
        suite = EvalSuite(team=team, name=name, path=str(path), format=checked.format, rows=checked.rows,
                          sha256=sha, metric=metric, labels=labels, max_new_tokens=max_new_tokens, created_by=user)
        if metric == "classification":
            for example in suite_examples(suite):
                if metrics.label_of(example["reference"], labels) == metrics.NO_LABEL:
                    raise ValidationError({"file": f"row {example['index'] + 1}: reference "
                                                   f"{example['reference'][:80]!r} is not one of the labels "
                                                   f"({', '.join(labels)})"})
        suite.save()
        return suite
    except BaseException:
        if not EvalSuite.objects.filter(path=str(path)).exists():
            path.unlink(missing_ok=True)
        raise


RENDERED_DOCUMENTS = 20  # an lm_eval task's templates are tried on this many of its documents at upload


def _harness_suite_create(*, team: Team, user, name: str, file: IO[bytes], filename: str,
                          task_config: str) -> EvalSuite:
    """An lm-evaluation-harness task: its YAML checked (harness.task_errors) and its documents read as records of a
    JSONL/JSON/CSV file, stored as they are (the task's own fields name the columns)."""
    task, errors = harness.task_errors(task_config or "")
    if errors:
        raise ValidationError(errors)
    try:
        kind = files.file_kind(filename)
    except files.DatasetError as exc:
        raise DatasetFileError(exc) from None
    if kind not in ("jsonl", "json", "csv"):
        raise ValidationError({"file": "an lm-evaluation-harness task's documents: a JSONL, JSON or CSV file"})
    data = file.read()
    try:
        records = list(files.read_records(io.BytesIO(data), kind))
    except files.DatasetError as exc:
        raise DatasetFileError(exc) from None
    bad = next((n for n, r in records if not isinstance(r, dict)), None)
    if not records or bad is not None:
        raise ValidationError({"file": f"row {bad}: each document must be an object of fields" if bad
                               else "the file has no documents"})
    # Each template rendered, in the sandbox the harness renders it in, on the first documents: a template refused
    # there (or naming a column the documents lack) is refused now, with its field, not at evaluation time.
    errors = harness.document_errors(task, [record for _, record in records[:RENDERED_DOCUMENTS]])
    if errors:
        raise ValidationError(errors)
    folder = settings.SUITES_DIR / str(team.id)
    folder.mkdir(parents=True, exist_ok=True)
    sha = hashlib.sha256(data).hexdigest()
    path = folder / f"{sha}{Path(filename).suffix.lower()}"
    path.write_bytes(data)
    return EvalSuite.objects.create(team=team, name=name, path=str(path), format=EvalSuite.Format.HARNESS,
                                    rows=len(records), sha256=sha, metric=metrics.HARNESS, task_config=task_config,
                                    created_by=user)


def _suite_mapping(file: IO[bytes], filename: str) -> files.Mapping | None:
    """prompt + reference columns map to prompt/completion; anything else is detected as for a dataset."""
    try:
        kind = files.file_kind(filename)
    except files.DatasetError as exc:
        raise DatasetFileError(exc) from None
    if kind == "parquet" or not hasattr(file, "seek"):
        return None
    position = file.tell()
    try:
        first = next(iter(files.read_records(file, kind)), (None, None))[1]
    except files.DatasetError:
        first = None
    finally:
        file.seek(position)
    if isinstance(first, dict) and {"prompt", "reference"} <= set(first):
        return REFERENCE_MAPPING
    return None


# Evaluations -----------------------------------------------------------------------------------------------------

def _decoding(suite: EvalSuite, decoding: dict[str, Any] | None) -> dict[str, Any]:
    if decoding is not None and not isinstance(decoding, dict):
        raise ValidationError({"decoding": "an object of max_new_tokens, temperature, top_p, seed"})
    given = dict(decoding or {})
    unknown = sorted(set(given) - set(DECODING))
    if unknown:
        raise ValidationError({k: f"not a decoding setting; allowed: {', '.join(DECODING)}" for k in unknown})
    values = {"max_new_tokens": suite.max_new_tokens, "temperature": 0.0, "top_p": 1.0, "seed": 0, **given}
    try:
        spec = parse_spec({"model": "m", "examples_file": "e", "adapter": None, **values})
    except SpecError as exc:
        raise ValidationError(exc.errors) from None
    return {k: getattr(spec, k) for k in DECODING}


def _cache_key(model: str, suite: EvalSuite, decoding: dict[str, Any]) -> str:
    blob = json.dumps({"model": model, "suite": suite.sha256, "metric": suite.metric, "labels": suite.labels,
                       "decoding": decoding}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _context_errors(model: str, suite: EvalSuite, max_new_tokens: int) -> dict[str, str]:
    """A local model's context against the suite's longest prompts, before anything is queued; a hub id is checked
    by the worker, which has the model."""
    config_path = Path(model) / "config.json"
    if not config_path.is_file():
        return {}
    from transformers import AutoTokenizer

    config = json.loads(config_path.read_text())
    limit = next((config[k] for k in ("max_position_embeddings", "n_positions", "max_sequence_length")
                  if isinstance(config.get(k), int)), None)
    if not limit:
        return {}
    tokenizer = AutoTokenizer.from_pretrained(model)
    for example in suite_examples(suite):
        if "messages" in example:
            if not tokenizer.chat_template:
                return {"suite": f"the suite is chat rows but {model}'s tokenizer has no chat template"}
            text = tokenizer.apply_chat_template(example["messages"], tokenize=False, add_generation_prompt=True)
        else:
            text = example["prompt"]
        n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if n + max_new_tokens > limit:
            return {"suite": f"row {example['index'] + 1}: its prompt is {n} tokens; with max_new_tokens "
                             f"{max_new_tokens} that exceeds the model's context of {limit} tokens"}
    return {}


def evaluation_create(*, suite: EvalSuite, user, run: Run | None = None, team: Team | None = None,
                      model: str | None = None, checkpoint_step: int | None = None, adapters: str = "on",
                      decoding: dict[str, Any] | None = None, queue: str | None = None) -> Evaluation:
    """Queue one evaluation: a run's final adapter or a checkpoint's, with its adapters on or off; or (run None) the
    base `model` alone, reused when the same model, suite and decoding were evaluated already."""
    team = run.team if run is not None else team
    if team is None:
        raise ValidationError({"run": "name the run to evaluate, or the team and model of a base-model evaluation"})
    require_role(user=user, team=team, role=Role.MEMBER, action="Evaluating")
    if suite.team_id != team.id:
        raise ValidationError({"suite": "no such eval suite in this team"})
    values = _decoding(suite, decoding)
    if adapters not in ("on", "off"):
        raise ValidationError({"adapters": "on or off"})
    adapter = ""
    if run is not None:
        model = run.config.get("model")
        adapter = _adapter_of(run, checkpoint_step)
    elif not model:
        raise ValidationError({"model": "name the base model to evaluate"})
    elif adapters == "off" or checkpoint_step is not None:
        raise ValidationError({"adapters": "a base-model evaluation has no adapter to disable or checkpoint"})
    key = _cache_key(model, suite, values) if run is None else ""
    if key:
        existing = Evaluation.objects.filter(cache_key=key, team=team).exclude(status=Status.FAILED).first()
        if existing is not None:
            return existing
    errors = {} if suite.metric == metrics.HARNESS else _context_errors(model, suite, values["max_new_tokens"])
    if errors:
        raise ValidationError(errors)
    queue = queue or (run.queue if run is not None else settings.TUNEBOARD_DEFAULT_QUEUE)
    with transaction.atomic():
        evaluation = Evaluation.objects.create(
            team=team, suite=suite, run=run, model=model, adapter_path=adapter, checkpoint_step=checkpoint_step,
            adapters=adapters, decoding=values, cache_key=key, queue=queue, created_by=user)
        transaction.on_commit(lambda: job_enqueue(evaluation, "training.eval_run"))
    return evaluation


def _adapter_of(run: Run, checkpoint_step: int | None) -> str:
    if checkpoint_step is None:
        if run.status != Run.Status.SUCCEEDED or not run.adapter_path:
            raise ValidationError({"run": f"run #{run.id} is {run.status} and saved no final adapter; evaluate a "
                                          "checkpoint of it, or wait for it to succeed"})
        return run.adapter_path
    path = Path(run.artifact_dir) / "checkpoints" / f"checkpoint-{checkpoint_step}"
    if not (path / "adapter_config.json").is_file():
        saved = sorted(int(p.name.split("-")[1]) for p in (Path(run.artifact_dir) / "checkpoints").glob("checkpoint-*")
                       if p.name.split("-")[1].isdigit()) if run.artifact_dir else []
        raise ValidationError({"checkpoint_step": f"run #{run.id} has no checkpoint at step {checkpoint_step}; "
                                                  f"saved: {', '.join(map(str, saved)) or 'none'}"})
    return str(path)


def evaluations_after_run(*, run_id: int) -> list[int]:
    """The evaluations a succeeded run asked for (Run.eval_suites), created once: a second delivery finds them."""
    run = Run.objects.select_related("team", "created_by").get(id=run_id)
    created = []
    for suite in run.eval_suites.all():
        if Evaluation.objects.filter(run=run, suite=suite, checkpoint_step=None, adapters="on").exists():
            continue
        try:
            created.append(evaluation_create(suite=suite, user=run.created_by, run=run).id)
        except Exception:  # noqa: BLE001 - one suite's problem must not stop the others
            log.exception("run %s: evaluation on suite %s not created", run.id, suite.id)
    return created


def evaluations_for_checkpoint(*, run_id: int, step: int) -> list[int]:
    """A checkpoint the run just saved, evaluated on its suites (Run.eval_checkpoints), once per suite and step."""
    run = Run.objects.select_related("team", "created_by").get(id=run_id)
    created = []
    for suite in run.eval_suites.all():
        if Evaluation.objects.filter(run=run, suite=suite, checkpoint_step=step, adapters="on").exists():
            continue
        try:
            created.append(evaluation_create(suite=suite, user=run.created_by, run=run, checkpoint_step=step).id)
        except Exception:  # noqa: BLE001 - one suite's problem must not stop the others
            log.exception("run %s: checkpoint %s not evaluated on suite %s", run.id, step, suite.id)
    return created


# Execution on the worker -----------------------------------------------------------------------------------------

def evaluation_execute(*, evaluation_id: int, worker_name: str) -> None:
    """Claim the evaluation (once, whatever the deliveries), generate in a child process, score, store. The one
    wrapper that owns failure: every outcome is succeeded or failed with the reason."""
    if not job_claim(Evaluation, evaluation_id, worker_name=worker_name):
        return
    evaluation = Evaluation.objects.select_related("suite", "run").get(id=evaluation_id)
    try:
        if evaluation.suite.metric == metrics.HARNESS:
            _harness_execute(evaluation)
        else:
            _generation_execute(evaluation)
    finally:
        if evaluation.run is not None and evaluation.run.sweep_id:  # a sweep judged on the suite waits for it
            sweep_advance_enqueue(evaluation.run.sweep_id)


def _generation_execute(evaluation: Evaluation) -> None:
    try:
        examples = suite_examples(evaluation.suite)
        outputs, finished = _generate(evaluation, examples)
        scored = metrics.score(evaluation.suite.metric, [outputs.get(e["index"], "") for e in examples],
                               [e["reference"] for e in examples], labels=evaluation.suite.labels or None)
        with transaction.atomic():
            EvalExample.objects.filter(evaluation=evaluation).delete()
            EvalExample.objects.bulk_create([
                EvalExample(evaluation=evaluation, index=e["index"], prompt=prompt_of(e), reference=e["reference"],
                            output=outputs.get(e["index"], ""), score=s,
                            label=(scored.predicted[i] if scored.predicted else "")[:200])
                for i, (e, s) in enumerate(zip(examples, scored.scores))])
            Evaluation.objects.filter(id=evaluation.id).update(
                status=Status.SUCCEEDED, figures=scored.figures, examples_per_s=finished.get("examples_per_s"),
                finished_at=timezone.now())
    except Exception as exc:  # noqa: BLE001
        log.exception("evaluation %s failed", evaluation.id)
        Evaluation.objects.filter(id=evaluation.id).update(
            status=Status.FAILED, error=str(exc) or repr(exc), finished_at=timezone.now())
        if not isinstance(exc, EvaluationFailed):
            Evaluation.objects.filter(id=evaluation.id).update(error=f"{exc}\n{traceback.format_exc()[-2000:]}")


def _harness_execute(evaluation: Evaluation) -> None:
    """lm-evaluation-harness's own scoring: its metrics become the figures, its per-document records the examples."""
    try:
        spec = {"model": evaluation.model, "adapter": evaluation.adapter_path or None,
                "task_yaml": evaluation.suite.task_config, "data_file": evaluation.suite.path, "batch_size": 8}
        events, finished = _engine(evaluation, "harness", spec)
        with transaction.atomic():
            EvalExample.objects.filter(evaluation=evaluation).delete()
            EvalExample.objects.bulk_create([
                EvalExample(evaluation=evaluation, index=e["index"], prompt=e.get("prompt", ""),
                            reference=e.get("reference", ""), output=e.get("output", ""), score=e.get("score", 0.0))
                for e in events if e.get("type") == "output"])
            Evaluation.objects.filter(id=evaluation.id).update(
                status=Status.SUCCEEDED, figures={**finished.get("metrics", {}), "examples": finished.get("examples")},
                examples_per_s=finished.get("examples_per_s"), finished_at=timezone.now())
    except Exception as exc:  # noqa: BLE001
        log.exception("evaluation %s failed", evaluation.id)
        Evaluation.objects.filter(id=evaluation.id).update(status=Status.FAILED, error=str(exc) or repr(exc),
                                                           finished_at=timezone.now())


class EvaluationFailed(Exception):
    """The generation reported a failure; the message is its own."""


def _generate(evaluation: Evaluation, examples: list[dict[str, Any]]) -> tuple[dict[int, str], dict[str, Any]]:
    folder = settings.EVALS_DIR / str(evaluation.id)
    folder.mkdir(parents=True, exist_ok=True)
    prompts = folder / "examples.jsonl"
    prompts.write_text("".join(json.dumps({k: v for k, v in e.items() if k != "reference"}, ensure_ascii=False) + "\n"
                               for e in examples), encoding="utf-8")
    spec = {"model": evaluation.model, "adapter": evaluation.adapter_path or None, "adapters": evaluation.adapters,
            "examples_file": str(prompts), **evaluation.decoding}
    events, finished = _engine(evaluation, "evaluate", spec)
    return {int(e["index"]): str(e.get("output") or "") for e in events if e.get("type") == "output"}, finished


def _engine(evaluation: Evaluation, command: str, spec: dict[str, Any]) -> tuple[list[dict], dict[str, Any]]:
    return run_engine(settings.EVALS_DIR / str(evaluation.id), command, spec)


def run_engine(folder: Path, command: str, spec: dict[str, Any]) -> tuple[list[dict], dict[str, Any]]:
    """Run `python -m training.engine <command>` on `spec` in a child process (its own process group, dying with the
    worker), from `folder`; its events, and its finished event (or EvaluationFailed with the failure's own message).
    Evaluations, the harness and the LoftQ check all run this way."""
    folder.mkdir(parents=True, exist_ok=True)
    spec_path = folder / "spec.json"
    spec_path.write_text(json.dumps(spec))
    process = TrainingProcess([sys.executable, "-m", "training.engine", command, str(spec_path)], cwd=folder,
                              stop_file=folder / "STOP")
    events: list[dict] = []
    for lines in process.batches(timeout=0.5):
        for line in lines:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict):
                events.append(event)
        process.take_stderr()
    returncode = process.wait()
    terminal = next((e for e in reversed(events) if e.get("type") in ("finished", "failed")), None)
    if terminal is None:
        raise EvaluationFailed(f"the {command} process exited with code {returncode} without reporting a result")
    if terminal["type"] == "failed":
        raise EvaluationFailed(terminal.get("message") or terminal.get("error_class") or f"{command} failed")
    return events, terminal


# The seed's bias check: base drift ---------------------------------------------------------------------------------

def drift_check_create(*, run: Run, suite: EvalSuite, user) -> dict[str, Evaluation]:
    """bias, "Run a base drift check": the suite's prompts through (1) the base model, (2) the run's adapted model
    and (3) the same with its adapters disabled, all greedy. With bias "none" (3) must equal (1) token for token;
    trained biases change the base model itself, so it does not. Reuses what exists; the selector judges it."""
    decoding = {"temperature": 0.0}
    return {
        "base": evaluation_create(suite=suite, user=user, team=run.team, model=run.config.get("model"),
                                  decoding=decoding, queue=run.queue),
        "adapted": _existing_or_new(run, suite, user, "on", decoding),
        "disabled": _existing_or_new(run, suite, user, "off", decoding),
    }


def _existing_or_new(run: Run, suite: EvalSuite, user, adapters: str, decoding: dict[str, Any]) -> Evaluation:
    values = _decoding(suite, decoding)
    existing = (Evaluation.objects.filter(run=run, suite=suite, checkpoint_step=None, adapters=adapters,
                                          decoding=values).exclude(status=Status.FAILED).first())
    return existing or evaluation_create(suite=suite, user=user, run=run, adapters=adapters, decoding=decoding)
