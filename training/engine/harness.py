"""A standard benchmark through EleutherAI's lm-evaluation-harness, on a task the team provides as files: its task
YAML and its data, local (no hub at run time). Tuneboard does not re-implement the harness's tasks; it only points
the task at the stored data file and runs `lm_eval.simple_evaluate` on the base model with the run's adapter.

`python -m training.engine harness SPEC.json` prints events: started, one output per document (index, output,
reference, score: the task's first metric for that document), then finished with the task's metrics, or failed.
SPEC: model, adapter (or null), task_yaml (the YAML text), data_file (JSONL/JSON/CSV), batch_size (default 8),
limit (optional: the first N documents).
"""
from __future__ import annotations

import json
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import yaml

from . import sandbox
from .events import EventSink

OUTPUT_TYPES = ("multiple_choice", "loglikelihood", "loglikelihood_rolling", "generate_until")
# Where the data comes from is Tuneboard's to say (the stored file); the rest of the task is the team's.
SET_BY_TUNEBOARD = ("dataset_path", "dataset_name", "dataset_kwargs", "test_split", "validation_split", "train_split",
                    "fewshot_split", "include", "group")
DATA_KINDS = {".jsonl": "json", ".json": "json", ".csv": "csv"}
# Fields that would have the harness read a file of the worker's disk or a prompt library (use_prompt), run the
# model's generated code (unsafe_code), build the task from Python (class), or load a metric's script from the hub
# (a metric's hf_evaluate): a team's task is data, never code.
REFUSED = {"use_prompt": "prompts come from the task's own fields (doc_to_text, doc_to_target), not a prompt library",
           "unsafe_code": "tasks that run the model's generated code cannot run here",
           "class": "a task defined in Python cannot run here: describe the task in YAML alone"}


def task_errors(text: str) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """The task YAML parsed, or the errors naming what is wrong with it. Pure."""
    try:
        task = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        detail = str(exc).splitlines()[0]
        if "!function" in text:
            detail = "custom Python functions (!function) cannot run here: describe the task in YAML alone"
        return None, {"task_config": f"not valid task YAML: {detail}"}
    if not isinstance(task, dict):
        return None, {"task_config": "the task YAML must be a mapping of fields (task, output_type, doc_to_text, ...)"}
    errors = {}
    name = task.get("task")
    if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
        errors["task_config"] = "task: give the task a name of letters, digits, _ and -"
    elif task.get("output_type") not in OUTPUT_TYPES:
        errors["task_config"] = f"output_type: one of {', '.join(OUTPUT_TYPES)}"
    elif "doc_to_text" not in task or "doc_to_target" not in task:
        errors["task_config"] = "doc_to_text and doc_to_target are required"
    else:
        taken = [k for k in SET_BY_TUNEBOARD if k in task]
        refused = [f"{k}: {why}" for k, why in REFUSED.items() if task.get(k) not in (None, False)]
        metrics = task.get("metric_list") if isinstance(task.get("metric_list"), list) else []
        templates = sandbox.text_errors(task)
        if taken:
            errors["task_config"] = (f"{', '.join(taken)}: set by Tuneboard (the data is the uploaded file); "
                                     "remove them")
        elif refused:
            errors["task_config"] = refused[0]
        elif any(isinstance(m, dict) and m.get("hf_evaluate") for m in metrics):
            errors["task_config"] = "metric_list: hf_evaluate loads a metric's code from the hub; use lm_eval's metrics"
        elif templates:
            errors["task_config"] = "; ".join(f"{field}: {why}" for field, why in templates.items())
    return (task if not errors else None), errors


def document_errors(task: dict[str, Any], docs: list[dict[str, Any]]) -> dict[str, str]:
    """The task's templates rendered in the sandbox on `docs` (the suite's first documents): the errors naming the
    field and the document where one is refused or fails. Pure."""
    failed = sandbox.render_errors(task, docs)
    return {"task_config": "; ".join(f"{field}: {why}" for field, why in failed.items())} if failed else {}


def _check_metrics(task: dict[str, Any]) -> None:
    """A metric the harness does not have would be looked up in the `evaluate` library, which loads a metric's
    script from the hub and runs it: only lm_eval's own metrics."""
    import lm_eval.api.metrics  # noqa: F401 - fills the registry
    from lm_eval.api.registry import metric_registry

    names = [m.get("metric") for m in task.get("metric_list") or [] if isinstance(m, dict)]
    unknown = [str(n) for n in names if n not in metric_registry]
    if unknown:
        raise ValueError(f"metric_list: {', '.join(unknown)} is not one of lm_eval's metrics "
                         f"({', '.join(sorted(metric_registry))})")


def _task_file(task: dict[str, Any], data_file: str, folder: Path) -> Path:
    kind = DATA_KINDS.get(Path(data_file).suffix.lower(), "json")
    full = {**task, "dataset_path": kind, "dataset_kwargs": {"data_files": {"test": data_file}}, "test_split": "test"}
    path = folder / f"{task['task']}.yaml"
    path.write_text(yaml.safe_dump(full, sort_keys=False))
    return path


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], (list, tuple)):
        return json.dumps([v[0] if len(v) == 1 else list(v) for v in value])
    return value if isinstance(value, str) else json.dumps(value, default=str)


def run(spec: dict[str, Any], sink: EventSink) -> int:
    try:
        task, errors = task_errors(spec.get("task_yaml", ""))
        if errors:
            raise ValueError(errors["task_config"])
        import torch
        from lm_eval import simple_evaluate
        from lm_eval.tasks import TaskManager

        # Before any task loads: every template the harness renders goes through the sandbox.
        sandbox.install_in_lm_eval(task)
        _check_metrics(task)

        with tempfile.TemporaryDirectory(prefix="tuneboard-task-") as tmp:
            _task_file(task, spec["data_file"], Path(tmp))
            manager = TaskManager(include_path=tmp, include_defaults=False)
            on_gpu = torch.cuda.is_available()
            model_args = {"pretrained": spec["model"], "dtype": "bfloat16" if on_gpu else "float32"}
            if spec.get("adapter"):
                model_args["peft"] = spec["adapter"]
            sink.emit("started", model=spec["model"], adapter=spec.get("adapter"), task=task["task"],
                      device="cuda" if on_gpu else "cpu")
            began = time.perf_counter()
            result = simple_evaluate(model="hf", model_args=model_args, tasks=[task["task"]], task_manager=manager,
                                     batch_size=int(spec.get("batch_size", 8)), device="cuda" if on_gpu else "cpu",
                                     limit=spec.get("limit"), log_samples=True)
        seconds = time.perf_counter() - began
        metrics = {k.split(",")[0]: v for k, v in result["results"][task["task"]].items()
                   if "," in k and isinstance(v, (int, float))}
        samples = result["samples"][task["task"]]
        names = [m["metric"] for m in task.get("metric_list", [])] or [k for k in metrics if not k.endswith("_stderr")]
        for sample in sorted(samples, key=lambda s: s["doc_id"]):
            first = next((sample[n] for n in names if isinstance(sample.get(n), (int, float))), None)
            context = sample["arguments"][0][0] if sample.get("arguments") else ""
            sink.emit("output", index=int(sample["doc_id"]), prompt=str(context), reference=_shown(sample["target"]),
                      output=_shown(sample["filtered_resps"]), score=float(first) if first is not None else 0.0)
        sink.emit("finished", step=0, examples=len(samples), metrics=metrics, runtime_s=round(seconds, 3),
                  examples_per_s=round(len(samples) / seconds, 3) if seconds else None, adapter_path=spec.get("adapter"))
        return 0
    except Exception as exc:  # noqa: BLE001 - every outcome is an event
        sink.emit("failed", step=0, error_class=type(exc).__name__, message=str(exc), traceback=traceback.format_exc(),
                  oom=False)
        return 1
