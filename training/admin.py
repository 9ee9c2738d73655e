"""Admin: presets are curated here (validated by the engine); runs, datasets and workers are inspected here."""
from django import forms
from django.contrib import admin, messages

from training.models import Dataset, MlflowSettings, Preset, Run, Sweep, Worker
from training.runs import services
from training.runs.preflight import preset_review
from training.trackers.mlflow_rest import uri_error


@admin.register(Preset)
class PresetAdmin(admin.ModelAdmin):
    list_display = ["name", "team", "version", "updated_at", "created_by"]
    list_filter = ["team"]
    search_fields = ["name", "notes"]
    readonly_fields = ["version", "created_by", "created_at", "updated_at"]
    fields = ["team", "name", "config", "notes", "version", "created_by", "created_at", "updated_at"]
    actions = ["duplicate"]

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)
        for note in preset_review(obj):
            self.message_user(request, f"Pre-flight: {note['title']}. {note['message']} (guidance: "
                                       f"{note['guidance_url']})", messages.WARNING)

    @admin.action(description="Duplicate the selected presets")
    def duplicate(self, request, queryset):
        copies = [services.preset_duplicate(preset=preset, user=request.user) for preset in queryset]
        self.message_user(request, f"Created {', '.join(c.name for c in copies)}", messages.SUCCESS)


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ["name", "team", "format", "rows", "size_bytes", "source", "created_at"]
    list_filter = ["team", "format", "source"]
    search_fields = ["name", "sha256"]
    # Files are added through the app (upload or register), which checks them; here they are read-only.
    readonly_fields = ["path", "source", "format", "rows", "size_bytes", "sha256", "stats", "created_by", "created_at"]

    def has_add_permission(self, request):
        return False


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "team", "status", "last_step", "total_steps", "queue", "worker", "created_at"]
    list_filter = ["status", "team", "queue"]
    search_fields = ["name", "error", "celery_task_id"]
    list_select_related = ["team", "worker"]
    # Status and results are written by the lifecycle functions only.
    readonly_fields = [f.name for f in Run._meta.fields if f.name not in ("name",)]

    def has_add_permission(self, request):
        return False


@admin.register(Worker)
class WorkerAdmin(admin.ModelAdmin):
    list_display = ["name", "hostname", "queues", "slots", "runs_now", "last_heartbeat_at"]
    search_fields = ["name", "hostname"]
    readonly_fields = ["name", "hostname", "queues", "pid", "gpus", "slots", "runs_now", "started_at",
                       "last_heartbeat_at"]
    exclude = ["current_runs"]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("current_runs")

    @admin.display(description="current runs")
    def runs_now(self, worker: Worker) -> str:
        return ", ".join(f"#{run.id}" for run in worker.current_runs.all()) or "—"


@admin.register(Sweep)
class SweepAdmin(admin.ModelAdmin):
    """Read-only: a sweep is started, stopped and resumed from its page, where the services keep its phases whole."""

    list_display = ["name", "team", "template", "status", "winner", "created_at"]
    list_filter = ["status", "team", "template"]
    search_fields = ["name", "template"]
    readonly_fields = [f.name for f in Sweep._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False


class MlflowSettingsAdminForm(forms.ModelForm):
    """The password and token are never shown back; left blank, the stored ones are kept."""

    class Meta:
        model = MlflowSettings
        fields = ["team", "tracking_uri", "experiment_name", "username", "password", "token"]
        widgets = {"password": forms.PasswordInput(render_value=False),
                   "token": forms.PasswordInput(render_value=False)}

    def clean_tracking_uri(self) -> str:
        uri = self.cleaned_data["tracking_uri"].strip()
        if uri_error(uri):
            raise forms.ValidationError(uri_error(uri))
        return uri.rstrip("/")

    def clean_password(self) -> str:
        return self.cleaned_data["password"] or self.instance.password

    def clean_token(self) -> str:
        return self.cleaned_data["token"] or self.instance.token


@admin.register(MlflowSettings)
class MlflowSettingsAdmin(admin.ModelAdmin):
    """A team's MLflow server; its admins set it on the Trackers page (/trackers/), staff may here too."""

    form = MlflowSettingsAdminForm
    list_display = ["team", "tracking_uri", "experiment_name", "username", "updated_at"]
    search_fields = ["team__name", "tracking_uri", "experiment_name"]

    def save_model(self, request, obj, form, change):
        obj.updated_by = request.user
        super().save_model(request, obj, form, change)
