"""The playground's load form: which adapter of the run (final or a checkpoint), and what beside it (the base model,
or another run of the team at its end or a checkpoint)."""
from __future__ import annotations

from django import forms
from django.http import Http404

from training import access
from training.models import Run

FINAL, BASE = "final", "base"


def _step(value: str, what: str) -> int | None:
    if value == FINAL:
        return None
    if not value.isdecimal():
        raise forms.ValidationError(f"{what}: 'final' or a checkpoint's step, not {value!r}")
    return int(value)


class PlaygroundForm(forms.Form):
    checkpoint = forms.CharField(widget=forms.Select, initial=FINAL, help_text="The final adapter or a saved checkpoint")
    beside = forms.CharField(widget=forms.Select, initial=BASE, help_text=(
        "The base model (the same loaded weights with the adapters off) or another run of the team on the same base "
        "model"))

    def __init__(self, *args, run: Run, checkpoint_steps: list[int], beside_runs: list[Run], user, **kwargs):
        super().__init__(*args, **kwargs)
        self.run, self.user = run, user
        finals = [(FINAL, "final adapter")] if run.adapter_path else []
        self.fields["checkpoint"].widget.choices = finals + [(str(s), f"checkpoint {s}") for s in checkpoint_steps]
        choices = [(BASE, "its base model")]
        for other in beside_runs:
            if other.adapter_path:
                choices.append((str(other.id), f"run #{other.id} {other.name} · final"))
            if other.last_checkpoint_step:
                choices.append((f"{other.id}@{other.last_checkpoint_step}",
                                f"run #{other.id} {other.name} · checkpoint {other.last_checkpoint_step}"))
        self.fields["beside"].widget.choices = choices

    def clean_checkpoint(self) -> int | None:
        return _step(self.cleaned_data["checkpoint"].strip(), "checkpoint")

    def clean(self):
        data = super().clean()
        beside = (self.data.get("beside") or BASE).strip()
        data["beside_run"], data["beside_checkpoint"] = None, None
        if beside == BASE:
            return data
        run_id, _, step = beside.partition("@")
        try:
            data["beside_run"] = access.get_run_for_user(self.user, int(run_id))
            data["beside_checkpoint"] = _step(step or FINAL, "beside")
        except (Http404, ValueError):
            self.add_error("beside", f"no run {run_id!r} in this team; choose the base model or one of the team's "
                                     "runs")
        except forms.ValidationError as exc:
            self.add_error("beside", exc)
        return data

    def add_service_errors(self, error) -> None:
        names = {"checkpoint": "checkpoint", "beside_run": "beside", "beside_checkpoint": "beside"}
        for key, messages in error.message_dict.items():
            for message in messages:
                self.add_error(names.get(key), message)
