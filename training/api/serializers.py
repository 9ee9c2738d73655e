"""What the API reads from a request and how it shows objects. Requests are only typed here; every rule about them
is the services' (the run form's and the sweep form's rules are the same functions), and reads come from the
selectors the pages use."""
from __future__ import annotations

from typing import Any

from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from training.datasets.forms import DatasetUploadForm
from training.models import Dataset, Preset, Run, Sweep

# The upload form's formats (its "auto" and "instruction" besides a dataset's own formats).
UPLOAD_FORMATS = [choice for choice, _ in DatasetUploadForm.FORMATS]
# Objects and lists whose keys are the selectors' (documented in their docstrings), not fixed here.
Object = serializers.DictField
AnyList = serializers.ListField


# Who is asking ---------------------------------------------------------------------------------------------------

class TeamRoleSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    slug = serializers.CharField()
    role = serializers.ChoiceField(choices=["viewer", "member", "admin"])


class MeSerializer(serializers.Serializer):
    username = serializers.CharField()
    teams = TeamRoleSerializer(many=True)


# Datasets --------------------------------------------------------------------------------------------------------

class DatasetSerializer(serializers.ModelSerializer):
    team_name = serializers.CharField(source="team.name", read_only=True)
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    url = serializers.SerializerMethodField()

    class Meta:
        model = Dataset
        fields = ["id", "team", "team_name", "name", "source", "format", "rows", "size_bytes", "sha256", "created_by",
                  "created_at", "url"]

    def get_url(self, dataset: Dataset) -> str:
        return reverse("dataset_detail", args=[dataset.id])


class DatasetDetailSerializer(DatasetSerializer):
    path = serializers.CharField()
    file = serializers.SerializerMethodField(help_text="The file as received: name, kind, bytes, columns, mapping")
    statistics = serializers.SerializerMethodField(help_text=(
        "The token statistics and their progress: state (queued, running, done, failed), done and total rows, "
        "params (model, max_length, ...), result once done, error once failed; {} before any was asked for"))

    class Meta(DatasetSerializer.Meta):
        fields = DatasetSerializer.Meta.fields + ["path", "file", "statistics"]

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_file(self, dataset: Dataset) -> dict[str, Any]:
        return (dataset.stats or {}).get("source") or {}

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_statistics(self, dataset: Dataset) -> dict[str, Any]:
        profile = dict((dataset.stats or {}).get("profile") or {})
        profile.pop("token", None)  # the task's own key for the request it serves
        return profile


class DatasetUploadSerializer(serializers.Serializer):
    """The upload page's form, as multipart fields (its rules: training/datasets/forms.py and services.py)."""

    team = serializers.IntegerField(required=False, help_text="A team you are a member of; optional if only one")
    name = serializers.CharField(max_length=200)
    file = serializers.FileField(help_text="JSONL, JSON (an array of records), CSV or Parquet")
    format = serializers.ChoiceField(choices=UPLOAD_FORMATS, required=False,
                                     help_text="auto (default): from the column names")
    column_text = serializers.CharField(required=False)
    column_prompt = serializers.CharField(required=False)
    column_completion = serializers.CharField(required=False)
    column_messages = serializers.CharField(required=False)
    column_instruction = serializers.CharField(required=False)
    column_input = serializers.CharField(required=False)
    column_output = serializers.CharField(required=False)


class DatasetRegisterSerializer(serializers.Serializer):
    """A file already on the shared storage, inside TUNEBOARD_DATASET_ROOTS (team admins)."""

    team = serializers.IntegerField(required=False, help_text="A team you are an admin of; optional if only one")
    name = serializers.CharField(max_length=200)
    path = serializers.CharField(max_length=1000)
    format = serializers.ChoiceField(choices=UPLOAD_FORMATS, required=False)
    column_text = serializers.CharField(required=False)
    column_prompt = serializers.CharField(required=False)
    column_completion = serializers.CharField(required=False)
    column_messages = serializers.CharField(required=False)
    column_instruction = serializers.CharField(required=False)
    column_input = serializers.CharField(required=False)
    column_output = serializers.CharField(required=False)


class DatasetProfileSerializer(serializers.Serializer):
    """The dataset page's statistics form (training/datasets/forms.py DatasetProfileForm)."""

    model = serializers.CharField()
    max_length = serializers.IntegerField(required=False, default=2048)
    batch_size = serializers.IntegerField(required=False, default=8)
    eval_ratio = serializers.FloatField(required=False, allow_null=True)
    seed = serializers.IntegerField(required=False, default=3407)
    eval_dataset = serializers.IntegerField(required=False, allow_null=True)
    completion_only_loss = serializers.BooleanField(required=False, default=True)


# Presets ---------------------------------------------------------------------------------------------------------

class PresetSerializer(serializers.ModelSerializer):
    team_name = serializers.SerializerMethodField()

    class Meta:
        model = Preset
        fields = ["id", "team", "team_name", "name", "config", "notes", "version", "created_at", "updated_at"]

    def get_team_name(self, preset: Preset) -> str | None:
        return preset.team.name if preset.team_id else None


# Runs ------------------------------------------------------------------------------------------------------------

class RunSerializer(serializers.ModelSerializer):
    """A row of the run list (from selectors.run_list_for: with queue_position and finding_count)."""

    team_name = serializers.CharField(source="team.name", read_only=True)
    dataset_name = serializers.CharField(source="dataset.name", read_only=True)
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    worker = serializers.SlugRelatedField(slug_field="name", read_only=True)
    progress = serializers.FloatField(allow_null=True, read_only=True, help_text="0..1; null while unknown")
    queue_position = serializers.IntegerField(allow_null=True, read_only=True,
                                              help_text="1 = next on its queue; null once it left the queue")
    finding_count = serializers.IntegerField(read_only=True)
    url = serializers.SerializerMethodField()

    class Meta:
        model = Run
        fields = ["id", "name", "team", "team_name", "dataset", "dataset_name", "preset", "preset_version", "sweep",
                  "status", "queue", "queue_position", "worker", "last_step", "total_steps", "progress",
                  "finding_count", "error_class", "resumed_from", "parent", "created_by", "created_at", "started_at",
                  "finished_at", "best_eval_loss", "best_eval_step", "tags", "note", "url"]

    def get_url(self, run: Run) -> str:
        return reverse("run_detail", args=[run.id])


class RunDetailSerializer(RunSerializer):
    model = serializers.SerializerMethodField()
    ws = serializers.SerializerMethodField(help_text="The run's websocket path (replay, then live messages)")
    eval_suites = serializers.PrimaryKeyRelatedField(many=True, read_only=True)

    class Meta(RunSerializer.Meta):
        fields = RunSerializer.Meta.fields + [
            "model", "config", "derived", "started", "preflight", "plan", "versions", "held_reason", "error",
            "last_checkpoint_step", "resumed_from_step", "base_run", "base_kind", "eval_suites", "eval_checkpoints",
            "ws"]

    def get_model(self, run: Run) -> str:
        return str((run.config or {}).get("model") or "")

    def get_ws(self, run: Run) -> str:
        return f"/ws/runs/{run.id}/"


class RunCreateSerializer(serializers.Serializer):
    from_run = serializers.IntegerField(required=False, allow_null=True, help_text=(
        "Start from this run of your teams (its page's 'New run from this run'): its dataset, preset, config, "
        "'Start from', suites, trackers and queue, each replaced by what this body gives; overrides go over its "
        "config. The new run links it as its parent"))
    dataset = serializers.IntegerField(required=False, help_text=(
        "A dataset of a team you are a member of; the run is that team's. Required unless from_run is given"))
    preset = serializers.IntegerField(required=False, allow_null=True, help_text="The team's or a global preset")
    overrides = serializers.DictField(required=False, default=dict, help_text=(
        "Config fields over the preset's (engine.config.TrainConfig), as JSON values, e.g. {\"r\": 32, "
        "\"learning_rate\": 1e-4}; their errors come back keyed by the field"))
    name = serializers.CharField(required=False, allow_blank=True, max_length=200)
    queue = serializers.CharField(required=False, allow_blank=True, allow_null=True, max_length=100)
    base_run = serializers.IntegerField(required=False, allow_null=True, help_text=(
        "Build on this succeeded run of the team (the run form's 'Start from')"))
    base_kind = serializers.ChoiceField(choices=Run.BaseKind.choices, required=False, default=Run.BaseKind.ADAPTER)
    eval_suites = serializers.ListField(child=serializers.IntegerField(), required=False, default=list)
    eval_checkpoints = serializers.BooleanField(required=False, default=False)
    trackers = serializers.ListField(child=serializers.CharField(max_length=40), required=False, default=list,
                                     help_text="What the worker mirrors the run to: tensorboard, mlflow (the team's "
                                               "server, set on its Trackers page)")


class RunResumeSerializer(serializers.Serializer):
    queue = serializers.CharField(required=False, allow_blank=True, allow_null=True, max_length=100,
                                  help_text="Default: the run's own queue")


class AdapterFileSerializer(serializers.Serializer):
    name = serializers.CharField()
    size = serializers.IntegerField()
    url = serializers.CharField()


class ExportCreateSerializer(serializers.Serializer):
    quantizations = serializers.JSONField(required=False, help_text=(
        "llama.cpp quantizations of the merged model, a list of q8_0, q6_k, q5_k_m, q4_k_m, q4_0 (default: q8_0 and "
        "q4_k_m; [] for the 16-bit GGUF alone)"))
    merged_gguf = serializers.JSONField(required=False, help_text="The merged model as a 16-bit GGUF (default true)")
    lora_gguf = serializers.JSONField(required=False, help_text=(
        "The adapter as a GGUF LoRA, with the base model's 16-bit GGUF to apply it to (default true)"))
    queue = serializers.CharField(required=False, allow_blank=True, allow_null=True, max_length=100,
                                  help_text="Default: the run's own queue (its worker has the model)")


class ExportFileSerializer(serializers.Serializer):
    name = serializers.CharField()
    size = serializers.IntegerField()
    sha256 = serializers.CharField()
    kind = serializers.ChoiceField(choices=["merged", "quantized", "base", "lora", "modelfile"])
    url = serializers.CharField(allow_null=True, help_text="Download; null until the export has succeeded")


class ExportProgressSerializer(serializers.Serializer):
    stage = serializers.CharField(help_text="merge, convert, quantize, modelfile")
    done = serializers.IntegerField()
    total = serializers.IntegerField()
    message = serializers.CharField()
    percent = serializers.IntegerField()


class ExportSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    run = serializers.IntegerField()
    status = serializers.ChoiceField(choices=["queued", "running", "succeeded", "failed"])
    queue = serializers.CharField()
    quantizations = AnyList(child=serializers.CharField())
    quantization_labels = AnyList(child=serializers.CharField())
    merged_gguf = serializers.BooleanField()
    lora_gguf = serializers.BooleanField()
    progress = ExportProgressSerializer()
    files = ExportFileSerializer(many=True)
    seconds = serializers.FloatField(allow_null=True)
    error = serializers.CharField(allow_blank=True)
    worker = serializers.CharField(allow_blank=True)
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)


class EventSerializer(serializers.Serializer):
    seq = serializers.IntegerField()
    event = serializers.CharField(help_text="started, warning, checkpoint, finished, failed, stopped, ...")
    data = Object()
    time = serializers.FloatField(help_text="Seconds since the epoch")


class FindingSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    code = serializers.CharField()
    severity = serializers.CharField()
    step = serializers.IntegerField()
    title = serializers.CharField()
    message = serializers.CharField()
    evidence = Object()
    parameters = serializers.ListField(child=serializers.CharField())
    guidance = AnyList(child=Object())
    apply = Object(allow_null=True, help_text=(
        "The change the finding names, as {url: the New run form with it made, text: 'field old → new'}; null when "
        "it names none"))


class SampleSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    step = serializers.IntegerField()
    prompt = serializers.CharField()
    completion = serializers.CharField()


class MetricsSerializer(serializers.Serializer):
    run = serializers.IntegerField()
    fields = serializers.ListField(child=serializers.CharField())
    count = serializers.IntegerField()
    every = serializers.IntegerField()
    points = AnyList(child=AnyList(), help_text="A list a stored point, in step order: its values in the order of "
                                                "fields (null: the point lacks it; \"nan\", \"inf\": non-finite); "
                                                "the last, run, is the run that logged it (for a resumed run, an "
                                                "earlier run of its chain up to the step it resumed from)")


class EvaluationsSerializer(serializers.Serializer):
    evaluations = AnyList(child=Object(), help_text=(
        "Newest first: suite, what (final, checkpoint N, adapters off), status, figures, headline, the base model's "
        "evaluation beside it (base), and with ?examples=1 the examples it got wrong (wrong)"))
    pending_suites = AnyList(child=Object(), help_text="Suites still to be evaluated at the run's end")
    active = serializers.BooleanField(help_text="Something is queued or running, or still to be created")


# Compare ---------------------------------------------------------------------------------------------------------

class CompareSerializer(serializers.Serializer):
    runs = AnyList(child=Object(), help_text="id, name, legend, status, config of the differing fields, outcomes")
    differing = serializers.ListField(child=serializers.CharField())
    parameters = AnyList(child=Object(), help_text="Each compared config field: name, values, differs")
    guidance = AnyList(child=Object(), help_text="What the guidance says of each differing field")
    findings = Object(help_text="Each run's findings, by run id")
    series = Object(help_text="The charts' series for metric, x, smooth, x0 and x1 (at most 1000 points a series)")


# Sweeps ----------------------------------------------------------------------------------------------------------

class SweepSerializer(serializers.ModelSerializer):
    team_name = serializers.CharField(source="team.name", read_only=True)
    dataset_name = serializers.CharField(source="dataset.name", read_only=True)
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    url = serializers.SerializerMethodField()

    class Meta:
        model = Sweep
        fields = ["id", "name", "team", "team_name", "template", "dataset", "dataset_name", "preset", "base_run",
                  "queue", "status", "verdict", "error", "created_by", "created_at", "finished_at", "url"]

    def get_url(self, sweep: Sweep) -> str:
        return reverse("sweep_detail", args=[sweep.id])


class SweepDetailSerializer(SweepSerializer):
    state = serializers.SerializerMethodField(help_text=(
        "The sweep page's state (training/sweeps/selectors.py sweep_state): phases with their members' status, "
        "progress and eval losses, each phase's verdict, the winner"))
    ws = serializers.SerializerMethodField()

    class Meta(SweepSerializer.Meta):
        fields = SweepSerializer.Meta.fields + ["base_config", "params", "auto_advance", "early_stop", "prune",
                                                "confirm_top", "eval_suite", "eval_figure", "state", "ws"]

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_state(self, sweep: Sweep) -> dict[str, Any]:
        return self.context["state"]

    def get_ws(self, sweep: Sweep) -> str:
        return f"/ws/sweeps/{sweep.id}/"


class SweepCreateSerializer(serializers.Serializer):
    """The sweep form's fields as JSON (its rules: training/sweeps/services.py sweep_create)."""

    template = serializers.CharField(help_text="The parameter whose procedure to run (r, learning_rate, ...) or "
                                               "'search' for an open Optuna search")
    dataset = serializers.IntegerField(required=False, allow_null=True,
                                       help_text="Default with a base run: its dataset")
    base_run = serializers.IntegerField(required=False, allow_null=True,
                                        help_text="A succeeded run of the team whose config the members vary")
    preset = serializers.IntegerField(required=False, allow_null=True)
    name = serializers.CharField(required=False, allow_blank=True, max_length=200)
    params = serializers.DictField(required=False, default=dict, help_text=(
        "The procedure's parameters: values (a list), tolerance, gain, lam, margin, range_steps, range_start, "
        "range_end, bound_fraction, memory_bound, phase; for 'search': space, trials, parallel, seed"))
    overrides = serializers.DictField(required=False, default=dict,
                                      help_text="Config fields set for every member, as JSON values")
    queue = serializers.CharField(required=False, allow_blank=True, allow_null=True, max_length=100)
    auto_advance = serializers.BooleanField(required=False, default=True)
    early_stop = serializers.BooleanField(required=False, default=True)
    prune = serializers.BooleanField(required=False, default=False)
    confirm_top = serializers.IntegerField(required=False, default=0)
    eval_suite = serializers.IntegerField(required=False, allow_null=True)
    eval_figure = serializers.CharField(required=False, allow_blank=True, default="")


class SweepResumeSerializer(serializers.Serializer):
    queue = serializers.CharField(required=False, allow_blank=True, allow_null=True, max_length=100)


# Workers ---------------------------------------------------------------------------------------------------------

class WorkerRunSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()


class WorkerSerializer(serializers.Serializer):
    name = serializers.CharField()
    hostname = serializers.CharField()
    pid = serializers.IntegerField(allow_null=True)
    queues = serializers.ListField(child=serializers.CharField())
    gpus = AnyList(child=Object(), help_text="name, memory_total, memory_used, utilization")
    slots = serializers.IntegerField()
    alive = serializers.BooleanField(help_text="False once silent longer than TUNEBOARD_WORKER_SILENT_S")
    started_at = serializers.DateTimeField()
    last_heartbeat_at = serializers.DateTimeField()
    runs = WorkerRunSerializer(many=True, help_text="The runs of your teams it trains now")
    hidden_runs = serializers.IntegerField(help_text="Runs of other teams it trains now (not named)")
    busy = serializers.IntegerField(help_text="Slots in use")
