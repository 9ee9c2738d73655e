"""The dataset forms: upload (with an optional column mapping), register a path in place, and statistics."""
from __future__ import annotations

from django import forms
from django.core.exceptions import ValidationError

from training import access
from training.datasets.files import ROLES, Mapping
from training.models import Dataset


class ServiceErrors:
    """A form that shows the services' {field: [message]} on the field they name (else above the form)."""

    def add_service_errors(self, error: ValidationError) -> None:
        for key, messages in error.message_dict.items():
            for message in messages:
                self.add_error(key if key in self.fields else None, message)


class DatasetUploadForm(ServiceErrors, forms.Form):
    FORMATS = [("auto", "Detect from the columns"), ("text", "text"), ("prompt_completion", "prompt + completion"),
               ("messages", "messages (chat)"), ("instruction", "instruction + input + output")]

    team = forms.ModelChoiceField(queryset=None, empty_label=None)
    name = forms.CharField(max_length=200)
    file = forms.FileField(help_text="JSONL, JSON (an array of records), CSV or Parquet with text, prompt/completion, "
                                     "messages or instruction/input/output columns")
    format = forms.ChoiceField(choices=FORMATS, initial="auto", required=False,
                               help_text="Only needed when the column names do not say it")
    column_text = forms.CharField(max_length=200, required=False, label="text column")
    column_prompt = forms.CharField(max_length=200, required=False, label="prompt column")
    column_completion = forms.CharField(max_length=200, required=False, label="completion column")
    column_messages = forms.CharField(max_length=200, required=False, label="messages column")
    column_instruction = forms.CharField(max_length=200, required=False, label="instruction column")
    column_input = forms.CharField(max_length=200, required=False, label="input column (optional)")
    column_output = forms.CharField(max_length=200, required=False, label="output column")

    MAPPING_FIELDS = ("format", "column_text", "column_prompt", "column_completion", "column_messages",
                      "column_instruction", "column_input", "column_output")

    def mapping(self):
        """The column mapping the user chose, or None to detect it from the column names."""
        fmt = self.cleaned_data.get("format") or "auto"
        if fmt == "auto":
            return None
        columns = {role: self.cleaned_data.get(f"column_{role}", "").strip() for role in ROLES[fmt]}
        return Mapping(fmt, {role: column for role, column in columns.items() if column})

    def mapping_fields(self):
        return [self[name] for name in self.MAPPING_FIELDS]

    def upload_fields(self):
        return [self[name] for name in self.fields if name not in self.MAPPING_FIELDS]

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["team"].queryset = access.team_list_where(user, "member")



class DatasetRegisterForm(DatasetUploadForm):
    """A file already on the workers' shared storage, inside TUNEBOARD_DATASET_ROOTS; team admins only."""
    file = None
    path = forms.CharField(max_length=1000, help_text="Absolute path on the shared storage, inside "
                                                      "TUNEBOARD_DATASET_ROOTS; recorded in place when the engine "
                                                      "can read it as it is")

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, user=user, prefix="register", **kwargs)
        self.fields["team"].queryset = access.team_list_where(user, "admin")


class DatasetProfileForm(ServiceErrors, forms.Form):
    """What the statistics are computed for: the run's model (its tokenizer), max_length, batch and split."""
    model = forms.CharField(max_length=1000, help_text="The folder (or name) of the model the run will train; its "
                                                       "tokenizer and chat template are used")
    max_length = forms.IntegerField(initial=2048, min_value=16, max_value=262144,
                                    help_text="The run's max_length: longer rows are cut")
    batch_size = forms.IntegerField(initial=8, min_value=1, max_value=4096, label="Batch size",
                                    help_text="Sequences per device batch (padding is to the longest in a batch)")
    eval_ratio = forms.FloatField(required=False, min_value=0, max_value=1, label="Eval split",
                                  help_text="Share held out for evaluation, as the run's eval_split (e.g. 0.05)")
    seed = forms.IntegerField(initial=3407, help_text="The run's seed: it picks the eval rows")
    eval_dataset = forms.ModelChoiceField(queryset=Dataset.objects.none(), required=False,
                                          label="Or a separate eval dataset")
    completion_only_loss = forms.BooleanField(initial=True, required=False, label="Completion-only loss",
                                              help_text="Only completion (assistant) tokens count toward the loss")

    def __init__(self, *args, dataset: Dataset, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["eval_dataset"].queryset = Dataset.objects.filter(team=dataset.team).exclude(id=dataset.id)
