"""The evaluation forms: upload an eval suite, and evaluate a run on one (its end or a checkpoint, adapters on or
off, and the base model beside it)."""
from __future__ import annotations

from django import forms

from training import access
from training.datasets.forms import ServiceErrors
from training.evaluation import metrics
from training.models import EvalSuite, Run

FINAL = "final"


class SuiteUploadForm(ServiceErrors, forms.Form):
    # The file's column problems ("format", "column_<role>") are about the file: shown on it, as the suite form has
    # no column mapping of its own.
    FILE_KEYS = ("format", "column_")

    team = forms.ModelChoiceField(queryset=None, empty_label=None)
    name = forms.CharField(max_length=200)
    file = forms.FileField(help_text="JSONL, JSON, CSV or Parquet: prompt and reference columns, prompt/completion "
                                     "(the completion is the reference), instruction/input/output, or chats whose "
                                     "last assistant turn is the reference")
    metric = forms.ChoiceField(choices=list(metrics.METRICS.items()),
                               initial="exact_match", widget=forms.RadioSelect)
    labels = forms.CharField(max_length=2000, required=False, help_text="Comma-separated, e.g. positive, negative: "
                                                                        "every reference must be one of them")
    task_config = forms.FileField(required=False, label="Task YAML", help_text=(
        "lm_eval only: the lm-evaluation-harness task (output_type, doc_to_text, doc_to_target, metric_list, ...); "
        "the file above is its documents"))
    max_new_tokens = forms.IntegerField(initial=64, help_text="Tokens generated per prompt (1-4096)")

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["team"].queryset = access.team_list_where(user, "member")

    def clean_labels(self) -> list[str]:
        """The label set; only a classification suite has one (the field is hidden for the other metrics, so what
        it still holds from an earlier choice is not held against the upload)."""
        if self.data.get(self.add_prefix("metric")) != "classification":
            return []
        return [label.strip() for label in self.cleaned_data.get("labels", "").split(",") if label.strip()]

    def clean_task_config(self) -> str:
        """The task YAML's text; only an lm_eval suite has one (hidden for the other metrics, like the labels)."""
        upload = self.cleaned_data.get("task_config")
        if self.data.get(self.add_prefix("metric")) != metrics.HARNESS:
            return ""
        if upload is None:
            raise forms.ValidationError("an lm_eval suite needs its task's YAML file")
        try:
            return upload.read().decode("utf-8")
        except UnicodeDecodeError:
            raise forms.ValidationError("the task YAML must be UTF-8 text") from None

    def add_service_errors(self, error) -> None:
        for key, messages in error.message_dict.items():
            field = "file" if key.startswith(self.FILE_KEYS) else key
            for message in messages:
                self.add_error(field if field in self.fields else None, message)


class RunEvaluateForm(forms.Form):
    """What to evaluate a run on: a suite of its team, its final adapter or a saved checkpoint, adapters on or off,
    and optionally the base model on the same suite."""

    suite = forms.ModelChoiceField(queryset=EvalSuite.objects.none(), empty_label=None, error_messages={
        "invalid_choice": "no such eval suite in this run's team; choose one from the list"})
    checkpoint = forms.CharField(widget=forms.Select, help_text="The final adapter, or a checkpoint the run saved")
    adapters = forms.ChoiceField(choices=[("on", "on"), ("off", "off: loaded, then disabled")], initial="on",
                                 widget=forms.RadioSelect)
    base = forms.BooleanField(required=False, initial=True, label="Also evaluate the base model",
                              help_text="Once per model, suite and decoding; reused when it exists")

    def __init__(self, *args, run: Run, checkpoint_steps: list[int], **kwargs):
        super().__init__(*args, **kwargs)
        self.run, self.checkpoint_steps = run, checkpoint_steps
        self.fields["suite"].queryset = EvalSuite.objects.filter(team=run.team).order_by("name")
        self.fields["suite"].label_from_instance = lambda s: f"{s.name} ({s.rows} rows, {s.metric})"
        choices = [(FINAL, "final adapter")] if run.status == Run.Status.SUCCEEDED and run.adapter_path else []
        choices += [(str(step), f"checkpoint at step {step}") for step in reversed(checkpoint_steps)]
        self.fields["checkpoint"].widget.choices = choices

    @property
    def can_evaluate(self) -> bool:
        return bool(self.fields["checkpoint"].widget.choices) and self.fields["suite"].queryset.exists()

    def clean_checkpoint(self) -> int | None:
        """None for the final adapter, else the step of a checkpoint the run saved."""
        value = self.cleaned_data["checkpoint"].strip()
        offered = {v for v, _ in self.fields["checkpoint"].widget.choices}
        if value in offered:
            return None if value == FINAL else int(value)
        saved = ", ".join(map(str, self.checkpoint_steps)) or "none"
        if value == FINAL:
            raise forms.ValidationError(f"run #{self.run.id} is {self.run.get_status_display().lower()} and saved no "
                                        f"final adapter; evaluate a saved checkpoint (saved: {saved}), or wait for "
                                        "it to succeed")
        raise forms.ValidationError(f"run #{self.run.id} saved no checkpoint at step {value}; saved: {saved}")


class LoftqCheckForm(forms.Form):
    """The config the LoftQ check measures: a dataset (its first rows calibrate), the model and the LoRA shape, and
    the LoftQ settings to compare with standard init."""

    dataset = forms.ModelChoiceField(queryset=None, empty_label=None, help_text="Its first 16 rows are the calibration set",
                                     error_messages={"invalid_choice": "no such dataset in this team"})
    model = forms.CharField(max_length=1000, help_text="A folder in the model roots, or a hub id")
    r = forms.IntegerField(min_value=1, initial=16)
    lora_alpha = forms.IntegerField(min_value=1, initial=16)
    target_modules = forms.CharField(initial="all-linear", help_text="A group (attention, mlp, all-linear) or names, "
                                                                     "comma-separated")
    loftq_bits = forms.IntegerField(min_value=2, max_value=8, initial=4, label="LoftQ bits")
    loftq_iter = forms.IntegerField(min_value=1, max_value=16, initial=1, label="LoftQ iterations")
    queue = forms.CharField(max_length=100, required=False, help_text="A queue whose workers have a GPU")

    def __init__(self, *args, datasets, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["dataset"].queryset = datasets.order_by("team__name", "-created_at")

    def config(self) -> dict:
        c = self.cleaned_data
        targets = [t.strip() for t in c["target_modules"].split(",") if t.strip()]
        return {"model": c["model"], "r": c["r"], "lora_alpha": c["lora_alpha"],
                "target_modules": targets[0] if len(targets) == 1 else targets,
                "loftq_config": {"loftq_bits": c["loftq_bits"], "loftq_iter": c["loftq_iter"]}}
