"""The run page's Export form: which GGUF files to make."""
from django import forms

from training.engine.gguf_export import DEFAULT_QUANTIZATIONS, QUANTIZATIONS


class ExportForm(forms.Form):
    merged_gguf = forms.BooleanField(required=False, initial=True, label="Merged model (16-bit GGUF)")
    quantizations = forms.MultipleChoiceField(
        required=False, initial=list(DEFAULT_QUANTIZATIONS), widget=forms.CheckboxSelectMultiple,
        choices=[(k, v) for k, v in QUANTIZATIONS.items()], label="Quantizations of the merged model")
    lora_gguf = forms.BooleanField(required=False, initial=True, label="Adapter as a GGUF LoRA (with the base's GGUF)")
