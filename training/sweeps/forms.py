"""The sweep form: a procedure (plan.TEMPLATES), its base (a succeeded run of the team, or a preset and a dataset),
the procedure's values and parameters as text, config overrides as key=value lines, and how the sweep runs."""
from __future__ import annotations

import json
import re
from typing import Any

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db.models import Q

from training import access, selectors
from training.engine.config import TrainConfig
from training.models import Dataset, EvalSuite, Preset, Run, Sweep
from training.run_config import value_text
from training.runs.forms import NOT_OFFERED, config_fields, parse_value
from training.sweeps import plan
from training.sweeps.services import PARAMS

# The procedure parameters each template reads (plan.py's p.get calls); the form shows only these for it.
TEMPLATE_PARAMS: dict[str, tuple[str, ...]] = {
    "r": ("tolerance", "gain"),
    "lora_alpha": ("tolerance", "gain"),
    "lora_dropout": ("tolerance", "gain"),
    "bias": ("margin",),
    "use_rslora": ("margin", "gain"),
    "loftq_config": ("lam",),
    "packing": ("tolerance",),
    "gradient_accumulation_steps": ("tolerance",),
    "warmup_steps": ("tolerance",),
    "learning_rate": ("range_steps", "range_start", "range_end", "bound_fraction"),
    "optim": ("memory_bound",),
    "weight_decay": (),
    "lr_scheduler_type": (),
    Sweep.SEARCH: ("search_space", "search_trials", "search_parallel", "search_seed"),
}
# The open search's fields on this form -> its params (training/sweeps/search.py), and back for its errors.
SEARCH_FIELDS = {"search_space": "space", "search_trials": "trials", "search_parallel": "parallel",
                 "search_seed": "seed"}
SEARCH_TITLE = "an open search over several fields you choose (Optuna's TPE, members pruned at the eval steps)"
INT_TEXT = re.compile(r"^[+-]?\d+$")
PAIR_TEXT = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")
# Keys of the services' errors that belong on another field of this form than their own name.
ERROR_FIELDS = {"start_from": "base_run", "rows": "dataset", "mean_tokens": "dataset", "params": "values"}


def parse_values(text: str) -> list[Any]:
    """Comma-separated values as the JSON the templates take: none, true/false, whole numbers, numbers, LoftQ's
    bits:iterations pairs ("4:1" -> [4, 1]), else the text itself (an optimizer's name, say)."""
    out: list[Any] = []
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        lowered = token.lower()
        pair = PAIR_TEXT.match(token)
        if lowered in ("none", "null"):
            out.append(None)
        elif lowered in ("true", "false"):
            out.append(lowered == "true")
        elif INT_TEXT.match(token):
            out.append(int(token))
        elif pair:
            out.append([int(pair.group(1)), int(pair.group(2))])
        else:
            try:
                number = float(token)
            except ValueError:
                out.append(token)
            else:
                out.append(number if number == number and abs(number) != float("inf") else token)
    return out


def values_text(values: list[Any]) -> str:
    """The inverse of parse_values, for showing a template's own values in the field."""
    def one(v: Any) -> str:
        if isinstance(v, (list, tuple)) and len(v) == 2:
            return f"{v[0]}:{v[1]}"
        if isinstance(v, float):
            return f"{v:g}"
        return value_text(v)
    return ", ".join(one(v) for v in values)


class SweepForm(forms.Form):
    template = forms.ChoiceField(label="Procedure", choices=())
    name = forms.CharField(max_length=200, required=False, help_text='Default: "<parameter> sweep on <dataset>"')
    base_run = forms.CharField(required=False, label="Base run", widget=forms.Select, help_text=(
        "A succeeded run of the team: every member starts from its config (and whatever it built on)"))
    dataset = forms.ModelChoiceField(queryset=Dataset.objects.none(), required=False,
                                     error_messages={"invalid_choice": "no such dataset in this team"},
                                     help_text="With a base run, blank: the run's own dataset")
    preset = forms.ModelChoiceField(queryset=Preset.objects.none(), required=False,
                                    empty_label="No preset (engine defaults)",
                                    error_messages={"invalid_choice": "no such preset in this team"},
                                    help_text="Without a base run: the config the members vary")
    phase = forms.CharField(required=False, label="Start at", widget=forms.Select, help_text=PARAMS.get(
        "phase", "the phase to start at"))
    values = forms.CharField(required=False, help_text=(
        "Comma-separated; blank: the procedure's own values for this base. LoftQ: none (standard) or bits:iterations, "
        "e.g. none, 4:1, 4:4"), widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}))
    tolerance = forms.CharField(required=False, help_text=PARAMS["tolerance"])
    gain = forms.CharField(required=False, help_text=PARAMS["gain"])
    lam = forms.CharField(required=False, label="λ", help_text=PARAMS["lam"])
    margin = forms.CharField(required=False, help_text=PARAMS["margin"])
    range_steps = forms.CharField(required=False, help_text=PARAMS["range_steps"])
    range_start = forms.CharField(required=False, help_text=PARAMS.get("range_start", "the range test's first rate"))
    range_end = forms.CharField(required=False, help_text=PARAMS["range_end"])
    bound_fraction = forms.CharField(required=False, help_text=PARAMS["bound_fraction"])
    memory_bound = forms.BooleanField(required=False, help_text=PARAMS["memory_bound"])
    search_space = forms.CharField(required=False, label="Search space", widget=forms.Textarea(attrs={
        "rows": 4, "spellcheck": "false",
        "placeholder": '{"learning_rate": {"low": 1e-5, "high": 1e-3, "log": true}, "r": {"choices": [8, 16, 32]}}'}),
        help_text="A JSON object: each field searched, with low and high (and log) or choices")
    search_trials = forms.IntegerField(required=False, label="Trials", help_text="How many members in all (default 8)")
    search_parallel = forms.IntegerField(required=False, label="In parallel",
                                         help_text="Members training at once (default 2)")
    search_seed = forms.IntegerField(required=False, label="Sampler seed",
                                     help_text="The TPE sampler's seed (default 0)")
    overrides = forms.CharField(required=False, label="Config overrides", widget=forms.Textarea(attrs={
        "rows": 5, "spellcheck": "false", "placeholder": "one key=value a line, e.g.\nmax_steps=200\neval_steps=50"}),
        help_text="Fields of the run form set for every member, over the base's values")
    queue = forms.CharField(max_length=100, required=False, help_text="The workers' queue the members train on")
    auto_advance = forms.BooleanField(required=False, initial=True, label="Start each next phase without asking")
    early_stop = forms.BooleanField(required=False, initial=True, label="Stop members that diverge")
    prune = forms.BooleanField(required=False, initial=False,
                               label="Prune: stop the worse members at the eval steps (successive halving)")
    confirm_top = forms.IntegerField(min_value=0, max_value=5, required=False, initial=0, label="Confirm the top",
                                     help_text="Rerun this many top candidates of the last phase at a second seed "
                                               "(0: none, at most 5)")

    eval_suite = forms.ModelChoiceField(queryset=EvalSuite.objects.none(), required=False, label="Judge on",
                                        empty_label="Eval loss (the procedure's own rule)",
                                        error_messages={"invalid_choice": "no such eval suite in this team"},
                                        help_text="Or an eval suite: every member is evaluated on it at its end")
    eval_figure = forms.CharField(required=False, label="Its figure", help_text=(
        "Blank: the suite's headline (accuracy for classification); or macro_f1, minority_f1, minority_recall, ..."))

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.user = user
        self.teams = access.team_list_where(user, "member")
        self.fields["eval_suite"].queryset = EvalSuite.objects.filter(team__in=self.teams).order_by("name")
        self.fields["eval_suite"].label_from_instance = lambda s: f"{s.name} ({s.metric}, {s.rows} rows)"
        self.fields["template"].choices = [(key, f"{key}: {t.title}") for key, t in plan.TEMPLATES.items()] + [
            (Sweep.SEARCH, f"{Sweep.SEARCH}: {SEARCH_TITLE}")]
        chosen = plan.TEMPLATES.get(self.data.get("template") or self.initial.get("template") or "r")
        self.fields["phase"].widget.choices = phase_choices(chosen) if chosen else []
        self.fields["queue"].widget.attrs["placeholder"] = settings.TUNEBOARD_DEFAULT_QUEUE
        self.fields["dataset"].queryset = access.dataset_list_for(user).filter(team__in=self.teams).order_by(
            "team__name", "-created_at")
        self.fields["preset"].queryset = access.preset_list_for(user).filter(
            Q(team__isnull=True) | Q(team__in=self.teams)).order_by("team__name", "name")
        multi_team = self.teams.count() > 1
        self.fields["dataset"].label_from_instance = (
            lambda d: f"{d.team.name} / {d.name} ({d.rows} rows)" if multi_team else f"{d.name} ({d.rows} rows)")
        self.fields["preset"].label_from_instance = (
            lambda p: f"{p.name} (v{p.version}, {p.team.name if p.team_id else 'global'})")
        self.base_runs = {r.id: r for r in selectors.runs_to_build_on(self.teams)}
        self.fields["base_run"].widget.choices = [("", "None: a preset and a dataset")] + [
            (str(r.id), f"{r.team.name} / #{r.id} {r.name}" if multi_team else f"#{r.id} {r.name}")
            for r in self.base_runs.values()]
        self.config_fields = {f.name: f for f in config_fields()}
        self.params: dict[str, Any] = {}
        self.config_overrides: dict[str, Any] = {}

    def clean_base_run(self) -> Run | None:
        text = (self.cleaned_data.get("base_run") or "").strip().lstrip("#")
        if not text:
            return None
        run = None
        if text.isdecimal():
            run = self.base_runs.get(int(text)) or Run.objects.select_related("team", "dataset").filter(
                id=int(text), team__in=self.teams).first()
        if run is None:
            raise ValidationError("no such run in this team")
        if run.status != Run.Status.SUCCEEDED:
            raise ValidationError(f"run #{run.id} is {run.get_status_display().lower()}; a sweep starts from a "
                                  "succeeded run")
        return run

    def clean_values(self) -> list[Any] | None:
        text = self.cleaned_data.get("values") or ""
        return parse_values(text) if text.strip() else None

    def clean_overrides(self) -> dict[str, Any]:
        out, errors = {}, []
        for number, line in enumerate((self.cleaned_data.get("overrides") or "").splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, sep, text = line.partition("=")
            key = key.strip()
            if not sep or not key:
                errors.append(f"line {number}: write key=value, e.g. max_steps=200")
                continue
            if key in NOT_OFFERED:
                errors.append(f"{key}: set by Tuneboard for every run")
                continue
            field = self.config_fields.get(key)
            if field is None:
                errors.append(f"{key}: not a config field" + (f"; a parameter of the procedure, set it above"
                                                              if key in PARAMS else ""))
                continue
            try:
                out[key] = self._config_value(field, text)
            except ValueError as exc:
                errors.append(f"{key}: {exc}")
        if errors:
            raise ValidationError(errors)
        return out

    @staticmethod
    def _config_value(field, text: str) -> Any:
        text = text.strip()
        if field.kind == "choice":
            by_text = {value_text(c): c for c in field.choices}
            if field.nullable:
                by_text["none"] = None
            if text not in by_text:
                raise ValueError(f"choose one of {', '.join(by_text)}")
            return by_text[text]
        return parse_value(field, text)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        base_run, dataset = cleaned.get("base_run"), cleaned.get("dataset")
        if "base_run" in self.errors or "dataset" in self.errors:
            return cleaned
        if base_run is not None and cleaned.get("preset") is not None:
            self.add_error("preset", "a sweep from a run starts from that run's config; leave the preset blank")
        if dataset is None:
            if base_run is None:
                self.add_error("dataset", "choose the dataset the members train on (or a base run)")
            else:
                cleaned["dataset"] = base_run.dataset
        template = cleaned.get("template")
        wanted = TEMPLATE_PARAMS.get(template, ())
        if template == Sweep.SEARCH:
            self._clean_search(cleaned)
            self.config_overrides = cleaned.get("overrides") or {}
            return cleaned
        if cleaned.get("values") is not None:
            self.params["values"] = cleaned["values"]
        if (cleaned.get("phase") or "").strip():
            self.params["phase"] = cleaned["phase"].strip()
        for name in wanted:
            if name == "memory_bound":
                if cleaned.get("memory_bound"):
                    self.params["memory_bound"] = True
                continue
            text = (cleaned.get(name) or "").strip()
            if not text:
                continue
            if name == "range_steps":
                if not INT_TEXT.match(text) or int(text) < 1:
                    self.add_error(name, "give a whole number of steps, e.g. 100")
                else:
                    self.params[name] = int(text)
                continue
            try:
                self.params[name] = float(text)
            except ValueError:
                self.add_error(name, "give a number, e.g. 0.01")
        self.config_overrides = cleaned.get("overrides") or {}
        return cleaned

    def _clean_search(self, cleaned: dict[str, Any]) -> None:
        text = (cleaned.get("search_space") or "").strip()
        if text:
            try:
                self.params["space"] = json.loads(text)
            except json.JSONDecodeError as exc:
                self.add_error("search_space", f"not valid JSON ({exc.msg}); give an object, e.g. "
                                               '{"learning_rate": {"low": 1e-5, "high": 1e-3, "log": true}}')
        for name, key in SEARCH_FIELDS.items():
            if name != "search_space" and cleaned.get(name) is not None:
                self.params[key] = cleaned[name]

    def service_kwargs(self) -> dict[str, Any]:
        """What sweep_preview takes; sweep_create takes these and create_kwargs()."""
        c = self.cleaned_data
        dataset = c["dataset"]
        return {"team": dataset.team, "template": c["template"], "dataset": dataset, "base_run": c.get("base_run"),
                "preset": c.get("preset"), "overrides": self.config_overrides, "params": self.params}

    def create_kwargs(self) -> dict[str, Any]:
        c = self.cleaned_data
        return {"name": c.get("name") or "", "queue": (c.get("queue") or "").strip() or None,
                "auto_advance": bool(c.get("auto_advance")), "early_stop": bool(c.get("early_stop")),
                "prune": bool(c.get("prune")), "confirm_top": c.get("confirm_top") or 0,
                "eval_suite": c.get("eval_suite"), "eval_figure": (c.get("eval_figure") or "").strip()}

    def add_service_errors(self, error: ValidationError) -> None:
        """The services' {key: [message]} on the field they name: a form field, the values (the swept field), the
        overrides (any other config field, named in the message), else the form as a whole."""
        chosen = self.cleaned_data.get("template") or ""
        template = plan.TEMPLATES.get(chosen)
        swept = {template.parameter, template.phases[0].axis} if template else set()
        searched = {v: k for k, v in SEARCH_FIELDS.items()} if chosen == Sweep.SEARCH else {}
        for key, messages in error.message_dict.items():
            top = key.partition(".")[0]
            if top == "fit":  # the fit planner's refusal of a member: the sweep's as a whole, at the top
                for message in messages:
                    self.add_error(None, f"Not started: {message}")
                continue
            if top in searched:
                target = searched[top]
                messages = [f"{key.partition('.')[2]}: {m}" if "." in key else m for m in messages]
                for message in messages:
                    self.add_error(target, message)
                continue
            target = ERROR_FIELDS.get(top) or (top if top in self.fields and top != "overrides" else None)
            if target is None and top in swept:
                target = "values"
            elif target is None and (top in TrainConfig.model_fields or top == "overrides"):
                target = "overrides"
                messages = [m if top == "overrides" else f"{key}: {m}" for m in messages]
            for message in messages:
                self.add_error(target, message if target else f"{key}: {message}")

    def error_dict(self) -> dict[str, list[str]]:
        return {k: [e["message"] for e in v] for k, v in self.errors.get_json_data().items()}

    def param_fields(self) -> list[forms.BoundField]:
        names = [n for n in PARAMS if n not in ("values", "phase") and n in self.fields] + list(SEARCH_FIELDS)
        return [self[name] for name in names]


def phase_choices(template: plan.Template) -> list[tuple[str, str]]:
    """The phases a sweep of the template may start at: its first (blank), or a later one."""
    first, *later = template.phases
    return [("", f"the first: {first.title}")] + [(p.key, p.title) for p in later]
