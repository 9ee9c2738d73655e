"""The run and dataset forms: the run form's config fields are generated from the engine's TrainConfig."""
from __future__ import annotations

import json
import re
import types
import typing
from dataclasses import dataclass
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.db.models import Q

from guidance import content
from training import access, selectors
from training.model_source import ModelChoices, model_choices
from training.engine.config import TrainConfig
from training.models import Dataset, EvalSuite, Preset, Run
from training.run_config import RESERVED_FIELDS, model_policy, value_text
from training.trackers.points import TRACKERS

# Every TrainConfig field the form offers, by group; a field the engine gains must be placed here (a test checks).
GROUPS: dict[str, tuple[str, ...]] = {
    "model": ("model", "max_length", "dtype", "load_in_4bit", "backend", "devices"),
    "lora": ("r", "lora_alpha", "lora_dropout", "bias", "use_rslora", "loftq_config", "target_modules",
             "random_state", "gradient_checkpointing", "tiled_mlp", "tiled_mlp_target_gb"),
    "sft": ("data_format", "eval_split", "packing", "eval_packing", "per_device_train_batch_size",
            "gradient_accumulation_steps", "warmup_steps", "learning_rate", "optim", "weight_decay",
            "lr_scheduler_type", "lr_scheduler_kwargs", "max_grad_norm", "num_train_epochs", "max_steps",
            "eval_steps", "early_stopping_patience", "early_stopping_threshold", "logging_steps", "save_steps",
            "seed", "completion_only_loss", "sample_prompts", "sample_max_new_tokens", "merge_16bit"),
}
# The form's first layer: what a first run needs. Every other field is folded in its group.
ESSENTIALS = ("model", "max_length", "r", "lora_alpha", "learning_rate", "num_train_epochs", "max_steps", "eval_split",
              "eval_steps")
# The run's own fields besides the dataset (first layer): folded together like a config group.
RUN_OPTIONS = ("preset", "name", "start_from", "eval_suites", "eval_checkpoints", "trackers")
RUN_OPTIONS_TITLE = "Preset, name, start from, evaluation and trackers"
# The model picker's choice for "none of these: type it".
OTHER_MODEL = "other"
# One line for each offered field that has no guidance page (the 15 seed hyperparameters have theirs).
NOTES: dict[str, str] = {
    "model": "a model directory on the worker (config, weights, tokenizer) or a hub id the worker can fetch",
    "max_length": "tokens per example; longer ones are cut. With packing, the length of each packed row",
    "backend": "unsloth: Unsloth's kernels (GPU); hf: transformers + PEFT; auto: unsloth where the worker has "
               "CUDA and unsloth, else hf",
    "devices": "GPUs the run trains on at once (1 to 8), one process each with the whole model (data-parallel); "
               "a worker with that many GPUs takes it. Each step's effective batch is micro-batch x accumulation x "
               "devices",
    "target_modules": "the linear layers that get adapters: attention (q, k, v, o), mlp (gate, up, down), "
                      "all-linear, or a list of module names",
    "random_state": "seed of the adapters' initial weights",
    "gradient_checkpointing": "keep each layer's input only and recompute the rest in backward: far less activation "
                              "memory for one more forward pass per step (GPU only; unsloth offloads the inputs to "
                              "CPU memory)",
    "tiled_mlp": "unsloth backend, GPU: run each MLP over the micro-batch in shards, recomputed in backward; less "
                 "peak memory for long or packed micro-batches, at some speed",
    "tiled_mlp_target_gb": "with tiled_mlp: as few shards as keep one MLP's activations near this many GB (faster); "
                           "none: shards of hidden-size tokens (least memory, slowest)",
    "data_format": "how rows become training text: text, prompt_completion, messages (the chat template), or auto "
                   "(from the columns)",
    "eval_split": "share of the training rows held out for evaluation, between 0 and 1; needs eval_steps",
    "eval_packing": "pack the evaluation rows as well",
    "per_device_train_batch_size": "examples (packed rows with packing) per forward pass on each GPU; activation "
                                   "memory grows with it",
    "lr_scheduler_kwargs": "the chosen scheduler's own arguments, as a JSON object",
    "max_grad_norm": "clip the gradients' global norm to this before each optimizer step; 0: no clipping",
    "num_train_epochs": "passes over the training rows, unless max_steps is set",
    "max_steps": "optimizer steps to train; none: num_train_epochs decides",
    "eval_steps": "evaluate (and generate the samples) every this many optimizer steps",
    "early_stopping_patience": "stop once eval loss has not improved for this many evals in a row, and keep the "
                               "best eval's checkpoint as the adapter; none: train to the end. Needs evals",
    "early_stopping_threshold": "with early stopping: how much eval loss must fall to count as an improvement "
                                "(in loss units; 0: any fall)",
    "logging_steps": "report loss, gradient norm, learning rate and throughput every this many optimizer steps",
    "save_steps": "save a checkpoint every this many optimizer steps; none: only when the run is stopped (the "
                  "adapter is saved at the end either way)",
    "seed": "seed of the data order, dropout and the trainer",
    "completion_only_loss": "loss on the answers only: the completions, or each assistant turn's text and its "
                            "end-of-turn token, for whatever chat template the model has. Default (none): answers "
                            "only for prompt_completion and messages data, every token for text; false: every token, "
                            "system and user turns and the text the template adds included",
    "sample_prompts": "prompts to generate from at each evaluation (at the end without one)",
    "sample_max_new_tokens": "tokens generated for each sample prompt",
    "merge_16bit": "also save the base model with the adapter merged in, in 16 bits",
}
# Not offered: set by Tuneboard for every run, or the config format's own version.
NOT_OFFERED = frozenset(RESERVED_FIELDS) | {"version"}

NONE_WORDS = {"none", "null"}
INT_TEXT = re.compile(r"^[+-]?\d+$")
# Config keys on errors that are not config fields: where on the form they belong.
FORM_KEYS = {"dataset": "dataset", "preset": "preset", "name": "name", "start_from": "start_from",
             "eval_suites": "eval_suites", "eval_checkpoints": "eval_checkpoints",
             "trackers": "trackers", "parent": "parent"}


@dataclass(frozen=True)
class ConfigField:
    """How one TrainConfig field is typed into the form; `kind` decides the widget and the parsing."""

    name: str
    kind: str  # int, float, number (int steps or float ratio), bool, choice, text, targets, json, lines
    nullable: bool
    choices: tuple[Any, ...]
    default: Any
    group: str
    guidance: content.ParamGuidance | None
    required: bool = False
    note: str = ""

    @property
    def default_text(self) -> str:
        return "required" if self.required else value_text(self.default)

    @property
    def recommended_text(self) -> str:
        """The guidance's recommended value (its "Simple default"), written the way the form takes it."""
        return value_text(self.guidance.default) if self.guidance else ""


def _strip_annotated(annotation: Any) -> Any:
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is typing.Annotated else annotation


def _describe(name: str) -> tuple[str, bool, tuple[Any, ...]]:
    annotation = TrainConfig.model_fields[name].annotation
    args = (typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType)
            else (annotation,))
    nullable = type(None) in args
    bases = [_strip_annotated(a) for a in args if a is not type(None)]
    if name == "target_modules":
        return "targets", nullable, typing.get_args(bases[0])
    if name == "sample_prompts":
        return "lines", nullable, ()
    if all(typing.get_origin(b) is typing.Literal for b in bases):
        return "choice", nullable, tuple(c for b in bases for c in typing.get_args(b))
    kinds = {bool: "bool", int: "int", float: "float", str: "text"}
    found = {kinds.get(b, "json") for b in bases}
    if found == {"int", "float"}:
        return "number", nullable, ()
    if len(found) == 1:
        return found.pop(), nullable, ()
    return "json", nullable, ()


def _default(name: str) -> Any:
    field = TrainConfig.model_fields[name]
    if field.is_required():
        return None
    return field.get_default(call_default_factory=True)


def config_fields() -> list[ConfigField]:
    guided = content.load_all()
    fields = []
    for group, names in GROUPS.items():
        for name in names:
            kind, nullable, choices = _describe(name)
            default = _default(name)
            if hasattr(default, "model_dump"):
                default = default.model_dump()
            fields.append(ConfigField(name=name, kind=kind, nullable=nullable, choices=choices, default=default,
                                      group=group, guidance=guided.get(name),
                                      required=TrainConfig.model_fields[name].is_required(),
                                      note=NOTES.get(name, "")))
    return fields


def parse_value(field: ConfigField, text: str) -> Any:
    """The typed text as the JSON value the engine validates; ValueError says what to type instead."""
    text = text.strip()
    if field.nullable and text.lower() in NONE_WORDS:
        return None
    if field.kind == "int":
        if not INT_TEXT.match(text):
            raise ValueError(f"give a whole number, e.g. {field.default_text}")
        return int(text)
    if field.kind in ("float", "number"):
        if field.kind == "number" and INT_TEXT.match(text):
            return int(text)
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"give a number, e.g. {field.default_text}") from None
    if field.kind == "bool":
        if text.lower() in ("true", "on", "yes", "1"):
            return True
        if text.lower() in ("false", "off", "no", "0"):
            return False
        raise ValueError("choose true or false")
    if field.kind == "targets":
        if text.startswith("["):
            return _json(text, "a JSON list of module names")
        if text in field.choices:
            return text
        return [part.strip() for part in text.split(",") if part.strip()]
    if field.kind == "lines":
        return [line.strip() for line in text.splitlines() if line.strip()]
    if field.kind == "json":
        return _json(text, "a JSON object, e.g. {\"loftq_bits\": 4, \"loftq_iter\": 4}"
                     if field.name == "loftq_config" else "a JSON object, e.g. {\"num_cycles\": 0.5}")
    return text


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"not valid JSON; give {what}") from None


class RunForm(forms.Form):
    """Dataset, preset, a name, and an optional override for every config field (blank: the preset's value)."""

    name = forms.CharField(max_length=200, required=False, help_text="Default: \"<preset> on <dataset>\"")
    dataset = forms.ModelChoiceField(queryset=Dataset.objects.none(), empty_label=None)
    preset = forms.ModelChoiceField(queryset=Preset.objects.none(), required=False, empty_label="No preset (engine defaults)")
    start_from = forms.CharField(required=False, label="Start from", widget=forms.Select, help_text=(
        "An earlier run of the team: its adapter (the adapters start from its weights, same r and target modules) "
        "or its merged model (fresh adapters on it); the model comes from that run"))
    eval_suites = forms.ModelMultipleChoiceField(
        queryset=EvalSuite.objects.none(), required=False, label="Evaluate at the end on",
        widget=forms.SelectMultiple(attrs={"size": 4}),
        help_text="Eval suites of the run's team, each evaluated on the final adapter once the run succeeds")
    eval_checkpoints = forms.BooleanField(required=False, label="Also evaluate each checkpoint it saves", help_text=(
        "On the same suites, queued as each checkpoint is saved (set save_steps); a worker of the run's queue runs "
        "them when it is free, so on a one-slot worker after the run"))
    trackers = forms.MultipleChoiceField(
        choices=list(TRACKERS.items()), required=False, label="Mirror to", widget=forms.CheckboxSelectMultiple,
        help_text="TensorBoard: event files in the run's folder, downloadable from its page. MLflow: the team's server, "
                  "set by a team admin on the Trackers page. A tracker that fails is a warning on the run, never a "
                  "failed run")

    parent = forms.IntegerField(required=False, widget=forms.HiddenInput)
    # A model folder of the roots or one the team trained before, typed into `model` (the value the run gets).
    model_pick = forms.ChoiceField(required=False, label="Model", error_messages={
        "invalid_choice": "%(value)s is not in the list; choose one, or Other and type it in the field below"})

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.user = user
        teams = access.team_list_where(user, "member")
        self.fields["dataset"].queryset = access.dataset_list_for(user).filter(team__in=teams).order_by(
            "team__name", "-created_at")
        self.fields["eval_suites"].queryset = EvalSuite.objects.filter(team__in=teams).select_related("team").order_by(
            "team__name", "name")
        presets = access.preset_list_for(user).filter(Q(team__isnull=True) | Q(team__in=teams))
        self.fields["preset"].queryset = presets.order_by("team__name", "name")
        multi_team = teams.count() > 1
        self.fields["dataset"].label_from_instance = (
            lambda d: f"{d.team.name} / {d.name} ({d.rows} rows)" if multi_team else f"{d.name} ({d.rows} rows)")
        self.fields["eval_suites"].label_from_instance = (
            lambda s: f"{s.team.name} / {s.name} ({s.rows} rows, {s.metric})" if multi_team
            else f"{s.name} ({s.rows} rows, {s.metric})")
        self.fields["preset"].label_from_instance = (
            lambda p: f"{p.name} (v{p.version}, {p.team.name if p.team_id else 'global'})")
        self.base_runs = {run.id: run for run in selectors.runs_to_build_on(teams)}
        choices = [("", "The model alone: fresh adapters")]
        for run in self.base_runs.values():
            label = f"{run.team.name} / #{run.id} {run.name}" if multi_team else f"#{run.id} {run.name}"
            choices.append((f"adapter:{run.id}", f"{label}: its adapter"))
            if run.merged_path:
                choices.append((f"merged:{run.id}", f"{label}: its merged model"))
        self.fields["start_from"].widget.choices = choices
        self.base_run, self.base_kind = None, ""
        self.models = model_choices(model_policy(), selectors.recent_models(teams))
        self.fields["model_pick"].choices = self._model_pick_choices(self.models)
        initial_model = (self.initial.get("model") or "").strip()
        if initial_model:
            self.initial["model_pick"] = initial_model if initial_model in self.models.values else OTHER_MODEL
        self.config_fields = config_fields()
        for field in self.config_fields:
            self.fields[field.name] = self._form_field(field)
        self.overrides: dict[str, Any] = {}
        # Started from a run: the fields its config set apart from its preset (their text), and those an Apply changed.
        self.prefilled: dict[str, str] = {}
        self.applied: dict[str, str] = {}
        self.fit_refusals: list[str] = []  # the non-field errors that are the fit planner's (the page hides them
        # once the fields are changed to fit)

    @staticmethod
    def _model_pick_choices(models: ModelChoices) -> list:
        other = ("Other: type a hub id (owner/name) or a model folder below" if models.hub
                 else "Other: type a model folder below (the hub is off here)")
        choices: list = [("", "Choose a model (or keep the preset's)")]
        if models.folders:
            choices.append(("Model folders on the workers", [(m, models.folder_label(m)) for m in models.folders]))
        if models.recent:
            choices.append(("Trained recently by your team", [(m, m) for m in models.recent]))
        return choices + [(OTHER_MODEL, other)]

    @staticmethod
    def _form_field(field: ConfigField) -> forms.Field:
        if field.kind == "choice" or field.kind == "bool":
            values = [value_text(c) for c in field.choices] if field.kind == "choice" else ["true", "false"]
            if field.nullable:
                values.append("none")
            return forms.ChoiceField(choices=[("", "preset / default")] + [(v, v) for v in values], required=False)
        if field.kind == "lines":
            return forms.CharField(required=False, widget=forms.Textarea(
                attrs={"rows": 2, "placeholder": "one prompt per line (none by default)"}))
        attrs = {"autocomplete": "off", "spellcheck": "false", "placeholder": field.default_text}
        if field.kind in ("int", "float", "number"):
            attrs["inputmode"] = "decimal"
        return forms.CharField(required=False, widget=forms.TextInput(attrs=attrs))

    def start_from_configs(self) -> dict[str, dict[str, Any]]:
        """For each "Start from" choice, the fields it fixes (the run form shows them as the effective values)."""
        configs = {}
        for run in self.base_runs.values():
            configs[f"adapter:{run.id}"] = run.fields_for_builds(Run.BaseKind.ADAPTER)
            if run.merged_path:
                configs[f"merged:{run.id}"] = run.fields_for_builds(Run.BaseKind.MERGED)
        return configs

    def clean_start_from(self) -> str:
        """"adapter:<run id>" or "merged:<run id>" of a run offered here; another team's run is no such run."""
        value = (self.cleaned_data.get("start_from") or "").strip()
        if not value:
            return ""
        kind, _, run_id = value.partition(":")
        run = self.base_runs.get(int(run_id)) if run_id.isdecimal() else None
        if kind not in Run.BaseKind.values or run is None:
            raise ValidationError(f"no such run to build on in your teams: {value!r}; choose one from the list")
        self.base_run, self.base_kind = run, kind
        return value

    def clean_parent(self) -> Run | None:
        """The run this one is started from (its page's "New run from this run" or an Apply): one of the user's teams'."""
        run_id = self.cleaned_data.get("parent")
        if run_id is None:
            return None
        run = Run.objects.filter(id=run_id, team_id__in=access.team_ids_for(self.user)).first()
        if run is None:
            raise ValidationError(f"no such run in your teams: #{run_id}")
        return run

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        picked = cleaned.get("model_pick") or ""
        if picked not in ("", OTHER_MODEL) and not (cleaned.get("model") or "").strip():
            cleaned["model"] = picked  # picked from the list, nothing typed (the page's script types it too)
        for field in self.config_fields:
            text = cleaned.get(field.name) or ""
            if field.name in self.errors or not text.strip():
                continue  # refused by its form field already, or left blank: the preset's value stands
            if field.kind == "choice":
                by_text = {value_text(c): c for c in field.choices}
                self.overrides[field.name] = None if text == "none" else by_text[text]
                continue
            try:
                self.overrides[field.name] = parse_value(field, text)
            except ValueError as exc:
                self.add_error(field.name, str(exc))
        return cleaned

    def error_summary(self) -> list[dict[str, str]]:
        """Every refused field after a submit, for the list at the top of the form: {field, anchor, message}."""
        shown = {"model_pick": "model"}  # the picker sits in the model's field
        return [{"field": shown.get(name, name), "anchor": f"field-{shown.get(name, name)}", "message": str(message)}
                for name, errors in self.errors.items() if name != "__all__" for message in errors]

    def add_service_errors(self, error: ValidationError) -> None:
        """The services' {field: [message]} on the form field they name (nested keys on their top field)."""
        for key, messages in error.message_dict.items():
            top, _, rest = key.partition(".")
            if top == "fit":  # the fit planner's refusal is the config's as a whole: at the top of the form
                for message in messages:
                    self.fit_refusals.append(f"Not started: {message}")
                    self.add_error(None, self.fit_refusals[-1])
                continue
            target = FORM_KEYS.get(top) or (top if top in self.fields and top not in FORM_KEYS else None)
            for message in messages:
                if target and not rest:
                    message = self.with_recommended(target, message)
                self.add_error(target, f"{rest}: {message}" if rest and target else
                               (message if target else f"{key}: {message}"))

    def with_recommended(self, name: str, message: str) -> str:
        """A refused config field's message with the guidance's recommended value, where the field has one."""
        spec = next((f for f in self.config_fields if f.name == name), None)
        if spec is None or spec.guidance is None:
            return message
        return f"{message}; the recommended value is {spec.recommended_text}"

    def _item(self, spec: ConfigField) -> dict[str, Any]:
        return {"spec": spec, "bound": self[spec.name], "prefilled": self.prefilled.get(spec.name),
                "applied": spec.name in self.applied}

    def essentials(self) -> list[dict[str, Any]]:
        """The first layer's config fields, in ESSENTIALS' order, each with its bound field and guidance."""
        by_name = {f.name: f for f in self.config_fields}
        return [self._item(by_name[name]) for name in ESSENTIALS]

    def is_set(self, name: str) -> bool:
        """Whether the user (or the run the form started from, or an Apply) set this field, or it was refused: a
        group holding such a field opens, so nothing set is hidden."""
        if name in self.errors or name in self.prefilled or name in self.applied:
            return True
        if self.is_bound:
            values = self.data.getlist(name) if hasattr(self.data, "getlist") else [self.data.get(name)]
            return any(str(v or "").strip() for v in values)
        value = self.initial.get(name)
        return bool(value) if not isinstance(value, str) else bool(value.strip())

    def groups(self) -> list[dict[str, Any]]:
        """The folded layer: the run's options, then each config group's fields past the first layer; a group is
        open when a field in it is set or refused."""
        options = [self[name] for name in RUN_OPTIONS]
        folded = [{"key": "run", "title": RUN_OPTIONS_TITLE, "run_fields": options, "fields": [],
                   "open": any(self.is_set(name) for name in RUN_OPTIONS)}]
        for key in GROUPS:
            specs = [f for f in self.config_fields if f.group == key and f.name not in ESSENTIALS]
            folded.append({"key": key, "title": content.GROUP_TITLES[key], "run_fields": [],
                           "fields": [self._item(f) for f in specs],
                           "open": any(self.is_set(f.name) for f in specs)})
        return folded
