"""The team's MLflow server, as a team admin types it on the Trackers page."""
from __future__ import annotations

from django import forms
from django.core.exceptions import ValidationError

from training.models import MlflowSettings
from training.trackers.mlflow_rest import uri_error


class MlflowSettingsForm(forms.Form):
    tracking_uri = forms.CharField(max_length=500, label="Tracking URI",
                                   help_text="The server's address, e.g. http://mlflow.internal:5000")
    experiment_name = forms.CharField(max_length=200, label="Experiment",
                                      help_text="The team's runs are logged in this experiment (made on first use)")
    username = forms.CharField(max_length=200, required=False, help_text="HTTP Basic auth, with the password")
    password = forms.CharField(max_length=500, required=False, widget=forms.PasswordInput(render_value=False),
                               help_text="Left blank: the stored one is kept")
    token = forms.CharField(max_length=2000, required=False, widget=forms.PasswordInput(render_value=False),
                            help_text="Bearer auth instead of a username (left blank: the stored one is kept)")
    clear_secrets = forms.BooleanField(required=False, label="Forget the stored password and token")

    @classmethod
    def for_settings(cls, settings: MlflowSettings | None, *, team_name: str, data=None, prefix: str = ""):
        initial = ({"tracking_uri": settings.tracking_uri, "experiment_name": settings.experiment_name,
                    "username": settings.username} if settings else {"experiment_name": f"Tuneboard {team_name}"})
        return cls(data, initial=initial, prefix=prefix)

    def clean_tracking_uri(self) -> str:
        uri = self.cleaned_data["tracking_uri"].strip()
        error = uri_error(uri)
        if error:
            raise ValidationError(error)
        return uri.rstrip("/")

    def clean_experiment_name(self) -> str:
        name = self.cleaned_data["experiment_name"].strip()
        if not name:
            raise ValidationError("name the experiment the team's runs go in")
        return name
