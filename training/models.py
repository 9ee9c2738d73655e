"""What Tuneboard records: datasets, presets, runs and everything a run reports, workers and sweeps."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.db.models.fields.json import KeyTextTransform
from django.utils import timezone

from dashboard.models import Team
from training.engine.config import text_problem
from training.run_config import ADAPTER_SHAPE_FIELDS, preset_config_errors


class Dataset(models.Model):
    class Source(models.TextChoices):
        UPLOAD = "upload", "Uploaded"
        REGISTERED = "registered", "Registered path"

    class Format(models.TextChoices):
        TEXT = "text", "text"
        PROMPT_COMPLETION = "prompt_completion", "prompt/completion"
        MESSAGES = "messages", "messages (chat)"

    # Once a run trained on a dataset these describe what it trained on, so they never change.
    CONTENT_FIELDS = ("path", "source", "format", "rows", "size_bytes", "sha256")

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="datasets")
    name = models.CharField(max_length=200)
    path = models.CharField(max_length=1000, help_text="Absolute path of the JSONL file on the shared var dir")
    source = models.CharField(max_length=12, choices=Source.choices)
    format = models.CharField(max_length=20, choices=Format.choices)
    rows = models.PositiveIntegerField()
    size_bytes = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    stats = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["team", "name"], name="dataset_team_name_unique")]

    def __str__(self) -> str:
        return self.name

    @property
    def is_locked(self) -> bool:
        return self.pk is not None and self.runs.exists()

    def save(self, *args, **kwargs) -> None:
        if self.pk is not None:
            stored = Dataset.objects.filter(pk=self.pk).values(*self.CONTENT_FIELDS).first()
            changed = [f for f in self.CONTENT_FIELDS if stored and stored[f] != getattr(self, f)]
            if changed and self.is_locked:
                raise ValidationError(
                    {f: "a run trained on this dataset, so its file cannot change; upload a new dataset" for f in changed}
                )
        super().save(*args, **kwargs)


class Preset(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, null=True, blank=True, related_name="presets",
                             help_text="Empty for a preset every team sees")
    name = models.CharField(max_length=200)
    config = models.JSONField(default=dict, blank=True,
                              help_text="The config fields this preset sets, e.g. {\"r\": 16, \"learning_rate\": 0.0002}")
    notes = models.TextField(blank=True)
    version = models.PositiveIntegerField(default=1, editable=False)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            # Global presets (team NULL) must have unique names too, hence NULLS NOT DISTINCT.
            models.UniqueConstraint(fields=["team", "name"], name="preset_team_name_unique", nulls_distinct=False),
        ]

    def __str__(self) -> str:
        return self.name if self.team_id else f"{self.name} (global)"

    def clean(self) -> None:
        if problem := text_problem(self.name or ""):
            raise ValidationError({"name": problem})
        if not isinstance(self.config, dict):
            raise ValidationError({"config": "must be a JSON object of config fields, e.g. {\"r\": 16}"})
        errors = preset_config_errors(self.config)
        if errors:
            raise ValidationError({"config": [f"{field}: {message}" for field, message in errors.items()]})

    def save(self, *args, **kwargs) -> None:
        bump = False
        if self.pk is not None:
            stored = Preset.objects.filter(pk=self.pk).values("config", "notes", "name").first()
            bump = bool(stored) and (stored["config"], stored["notes"], stored["name"]) != (
                self.config, self.notes, self.name)
        if bump:
            # In SQL, so two admins saving at once both count.
            self.version = models.F("version") + 1
        super().save(*args, **kwargs)
        if bump:
            self.refresh_from_db(fields=["version"])


class Sweep(models.Model):
    """A tuning procedure of the seed (training/sweeps/plan.py's TEMPLATES) or an open Optuna search, run as phases of
    ordinary runs on one dataset, each phase judged by its rule (training/sweeps/rules.py)."""

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        CONFIRMING = "confirming", "Waiting for you to confirm the next phase"
        FINISHED = "finished", "Finished"
        STOPPED = "stopped", "Stopped"
        FAILED = "failed", "Failed"

    TERMINAL = frozenset({Status.FINISHED, Status.STOPPED, Status.FAILED})
    SEARCH = "search"  # the template name of the open Optuna search

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="sweeps")
    name = models.CharField(max_length=200)
    template = models.CharField(max_length=60, help_text="The parameter whose procedure this runs, or 'search'")
    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="sweeps")
    preset = models.ForeignKey(Preset, on_delete=models.SET_NULL, null=True, blank=True, related_name="sweeps")
    base_run = models.ForeignKey("Run", on_delete=models.SET_NULL, null=True, blank=True, related_name="+",
                                 help_text="The run whose config the first phase starts from")
    base_config = models.JSONField(default=dict, help_text="The full config the first phase's members vary")
    params = models.JSONField(default=dict, blank=True, help_text="The template's parameters as launched")
    queue = models.CharField(max_length=100)
    auto_advance = models.BooleanField(default=True, help_text="Start the next phase without asking")
    early_stop = models.BooleanField(default=True, help_text="Stop members that diverge")
    prune = models.BooleanField(default=False, help_text="Successive halving at the eval steps")
    confirm_top = models.PositiveSmallIntegerField(
        default=0, help_text="Rerun this many top candidates of the last phase with a second seed (0: no)")
    eval_suite = models.ForeignKey("EvalSuite", on_delete=models.PROTECT, null=True, blank=True, related_name="+",
                                   help_text="Judge members on this suite's figure instead of eval loss")
    eval_figure = models.CharField(max_length=60, blank=True, help_text="The suite's figure the rules read")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.RUNNING)
    verdict = models.TextField(blank=True)
    winner = models.ForeignKey("SweepMember", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["team", "-created_at"], name="sweep_team_created_idx")]

    def __str__(self) -> str:
        return self.name

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL


class SweepPhase(models.Model):
    """One phase as plan.expand returned it; its verdict is written once, when its rule decides."""

    sweep = models.ForeignKey(Sweep, on_delete=models.CASCADE, related_name="phases")
    index = models.PositiveSmallIntegerField()
    key = models.CharField(max_length=40)
    title = models.CharField(max_length=200)
    axis = models.CharField(max_length=60)
    rule = models.CharField(max_length=40)
    rule_params = models.JSONField(default=dict, blank=True)
    params = models.JSONField(default=dict, blank=True)
    held = models.JSONField(default=dict, blank=True)
    budget = models.JSONField(default=dict, blank=True)
    base = models.JSONField(default=dict, blank=True)
    verdict = models.JSONField(null=True, blank=True, help_text="rules.Verdict as a dict, once decided")
    created_at = models.DateTimeField(auto_now_add=True)
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["sweep", "index"]
        constraints = [models.UniqueConstraint(fields=["sweep", "index"], name="sweepphase_sweep_index_unique")]

    def __str__(self) -> str:
        return f"{self.sweep_id}/{self.key}"


class SweepMember(models.Model):
    """One run of a phase. `run` is its latest attempt: a lost member resumed from its checkpoint points at the
    continuation. `outcome` is set when the sweep ended it early (diverged, pruned) or judged it invalid."""

    class Outcome(models.TextChoices):
        NONE = "", "-"
        DIVERGED = "diverged", "Diverged"
        PRUNED = "pruned", "Pruned"

    phase = models.ForeignKey(SweepPhase, on_delete=models.CASCADE, related_name="members")
    sweep = models.ForeignKey(Sweep, on_delete=models.CASCADE, related_name="members")
    index = models.PositiveSmallIntegerField()
    name = models.CharField(max_length=200)
    value = models.JSONField(null=True, blank=True)
    values = models.JSONField(default=dict, blank=True, help_text="The fields it sets; all it changes from the base")
    config = models.JSONField(default=dict)
    steps = models.PositiveIntegerField()
    tokens = models.BigIntegerField(null=True, blank=True)
    run = models.ForeignKey("Run", on_delete=models.SET_NULL, null=True, blank=True, related_name="sweep_members")
    outcome = models.CharField(max_length=10, choices=Outcome.choices, blank=True, default="")
    outcome_note = models.TextField(blank=True, help_text="The evidence: the finding, or the rung's losses")
    result = models.JSONField(default=dict, blank=True, help_text="What the phase's rule read, once it decided")

    class Meta:
        ordering = ["phase", "index"]
        constraints = [models.UniqueConstraint(fields=["phase", "name"], name="sweepmember_phase_name_unique")]

    def __str__(self) -> str:
        return self.name


class Worker(models.Model):
    name = models.CharField(max_length=200, unique=True, help_text="Celery node name, e.g. gpu@box1")
    hostname = models.CharField(max_length=200)
    queues = models.JSONField(default=list)
    pid = models.IntegerField(null=True)
    gpus = models.JSONField(default=list, help_text="[{name, memory_total, memory_used, utilization}]")
    slots = models.PositiveSmallIntegerField(default=1, help_text="Runs it trains at once (its Celery concurrency)")
    # Written by run_claim and cleared when run_execute ends (one writer each way): a run its worker holds but that is
    # not in here was left unrecorded, and the lost-run check ends it.
    current_runs = models.ManyToManyField("Run", blank=True, related_name="+", help_text="The runs it trains now")
    started_at = models.DateTimeField(default=timezone.now)
    last_heartbeat_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def heartbeat_age(self) -> timedelta:
        return timezone.now() - self.last_heartbeat_at

    @property
    def is_silent(self) -> bool:
        return self.heartbeat_age.total_seconds() > settings.TUNEBOARD_WORKER_SILENT_S


# A run's tags: a few short labels ("baseline", "ablation-lr"), letters, digits and - _ . only.
MAX_TAGS, TAG_MAX_LENGTH, NOTE_MAX_LENGTH = 10, 40, 2000


class Run(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        STARTING = "starting", "Starting"
        RUNNING = "running", "Running"
        STOPPING = "stopping", "Stopping"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        STOPPED = "stopped", "Stopped"
        LOST = "lost", "Lost"

    class BaseKind(models.TextChoices):
        ADAPTER = "adapter", "its adapter"
        MERGED = "merged", "its merged model"

    TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.STOPPED, Status.LOST})
    # A worker owns the run in these: the ones a silent worker leaves behind as lost.
    ON_WORKER = frozenset({Status.STARTING, Status.RUNNING, Status.STOPPING})
    # A run in these can be resumed from its last checkpoint (as a new run).
    RESUMABLE = frozenset({Status.STOPPED, Status.LOST, Status.FAILED})

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="runs")
    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="runs")
    preset = models.ForeignKey(Preset, on_delete=models.SET_NULL, null=True, blank=True, related_name="runs")
    preset_version = models.PositiveIntegerField(null=True, blank=True)
    sweep = models.ForeignKey(Sweep, on_delete=models.SET_NULL, null=True, blank=True, related_name="runs")
    resumed_from = models.ForeignKey("self", on_delete=models.SET_NULL, null=True, blank=True,
                                     related_name="continuations")
    # The checkpoint this run continues from (kept here: the original may be deleted); its curve joins the
    # original's at resumed_from_step.
    resumed_from_checkpoint = models.CharField(max_length=1000, blank=True)
    resumed_from_step = models.PositiveIntegerField(null=True, blank=True)
    # The earlier run of the same team this one builds on: its adapter (the adapters start from its weights) or its
    # merged model (fresh adapters on it). Not a path the user types: model paths inside the runs are refused.
    base_run = models.ForeignKey("self", on_delete=models.SET_NULL, null=True, blank=True, related_name="builds")
    base_kind = models.CharField(max_length=10, choices=BaseKind.choices, blank=True)
    # The run this one was started from ("New run from this run", an Apply on a finding or a note): its config was
    # the form's start. Not a resume (resumed_from) and not built on (base_run): only where the idea came from.
    parent = models.ForeignKey("self", on_delete=models.SET_NULL, null=True, blank=True, related_name="children")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    name = models.CharField(max_length=200)

    config = models.JSONField(help_text="The full, validated config the run trains with; never changes")
    dataset_sha256 = models.CharField(max_length=64)
    queue = models.CharField(max_length=100)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    worker = models.ForeignKey(Worker, on_delete=models.SET_NULL, null=True, blank=True, related_name="runs")
    celery_task_id = models.CharField(max_length=255, blank=True)
    held_reason = models.TextField(blank=True, help_text=(
        "Why a queued run has not started on the worker that last received it (its slots are busy, or its GPU has "
        "too little memory free); cleared when a worker claims it"))
    slot_reserved_bytes = models.BigIntegerField(null=True, blank=True, help_text=(
        "The GPU memory its slot reserved when a worker admitted it (training.planner.slots); empty: the whole GPU "
        "(no predicted peak) or a CPU worker"))

    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    error_class = models.CharField(max_length=200, blank=True)
    error = models.TextField(blank=True)
    traceback = models.TextField(blank=True)

    derived = models.JSONField(default=dict, blank=True)
    versions = models.JSONField(default=dict, blank=True)
    started = models.JSONField(default=dict, blank=True,
                               help_text="Facts from the started event: trainable_params, lora_scale, device, ...")
    preflight = models.JSONField(default=list, blank=True,
                                 help_text="The pre-flight review's notes on the config, made when the run was created")
    plan = models.JSONField(default=dict, blank=True, help_text=(
        "The fit planner's prediction when the run was created (training.planner): peak VRAM, tokens/s and time, "
        "each with its band, and whether it was calibrated; {} where no prediction could be made"))

    eval_suites = models.ManyToManyField("EvalSuite", blank=True, related_name="+",
                                         help_text="Suites evaluated once the run succeeds")
    eval_checkpoints = models.BooleanField(default=False, help_text=(
        "Also evaluate every checkpoint it saves on those suites (queued as each is saved)"))
    trackers = models.JSONField(default=list, blank=True, help_text=(
        "The trackers its worker mirrors it to: 'tensorboard' (event files in its folder), 'mlflow' (the team's "
        "server); chosen when it is created (training/trackers/)"))
    tracker_links = models.JSONField(default=dict, blank=True, help_text=(
        "Where the trackers have it, as each reports: {'mlflow': {'run_id', 'experiment_id', 'url'}, "
        "'tensorboard': {'log_dir'}}"))

    artifact_dir = models.CharField(max_length=1000, blank=True)
    adapter_path = models.CharField(max_length=1000, blank=True)
    last_checkpoint_path = models.CharField(max_length=1000, blank=True)
    last_checkpoint_step = models.PositiveIntegerField(null=True, blank=True)
    last_step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(null=True, blank=True)
    log_tail = models.TextField(blank=True, help_text="The last lines the training process wrote to stderr")
    # The runs table sorts on these: read from the curve, a sort over 10,000 runs would read every run's points.
    best_eval_loss = models.FloatField(null=True, blank=True, help_text="The lowest eval loss so far (the recorder "
                                       "keeps it as eval points arrive)")
    best_eval_step = models.PositiveIntegerField(null=True, blank=True, help_text="The step of best_eval_loss")

    # config["model"] as a column of its own, kept by PostgreSQL: the table filters on it and lists the models run
    # from an index, where reading it out of 10,000 configs took 160 ms.
    model_name = models.GeneratedField(expression=KeyTextTransform("model", "config"), output_field=models.TextField(),
                                       db_persist=True)
    tags = ArrayField(models.CharField(max_length=TAG_MAX_LENGTH), default=list, blank=True, size=MAX_TAGS,
                      help_text="The team's labels for the run (the runs table filters on them)")
    note = models.TextField(blank=True, max_length=NOTE_MAX_LENGTH, help_text="The team's note on the run")

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["team", "-created_at"], name="run_team_created_idx"),
            models.Index(fields=["team", "model_name"], name="run_team_model_idx"),
            # The tags in use are read from the tagged runs only.
            models.Index(fields=["team"], condition=~Q(tags=[]), name="run_tagged_idx"),
            GinIndex(fields=["tags"], name="run_tags_idx"),
            # Queue positions count the queued runs ahead on the same queue.
            models.Index(fields=["queue", "id"], name="run_queued_idx", condition=Q(status="queued")),
            # The lost-run check looks only at runs a worker holds.
            models.Index(fields=["worker"], name="run_on_worker_idx",
                         condition=Q(status__in=["starting", "running", "stopping"])),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL

    @property
    def merged_path(self) -> str:
        """Where a succeeded run with merge_16bit saved its merged model; empty otherwise."""
        if self.status != self.Status.SUCCEEDED or not (self.config or {}).get("merge_16bit") or not self.artifact_dir:
            return ""
        return str(Path(self.artifact_dir) / "merged")

    def fields_for_builds(self, kind: str) -> dict[str, Any]:
        """The config fields a run that builds on this one takes from it: its merged model; or its model, its adapter
        as init_adapter and that adapter's shape (r, target modules, bias), with no LoftQ initialisation."""
        if kind == self.BaseKind.MERGED:
            return {"model": self.merged_path}
        return {"model": self.config.get("model"), "init_adapter": self.adapter_path,
                **{name: self.config.get(name) for name in ADAPTER_SHAPE_FIELDS}, "loftq_config": None}

    @property
    def elapsed(self) -> timedelta | None:
        """How long it trained (or has trained so far); None until it started."""
        if self.started_at is None:
            return None
        return (self.finished_at or timezone.now()) - self.started_at

    @property
    def progress(self) -> float | None:
        """Fraction of the total steps done, 0..1; None while the total is unknown."""
        if self.status == self.Status.SUCCEEDED:
            return 1.0
        if not self.total_steps:
            return None
        return min(self.last_step / self.total_steps, 1.0)


class MetricPoint(models.Model):
    """One training step's numbers; metrics and eval events for the same step land in the same row."""

    # The columns each engine event carries: an upsert updates only those, so eval never erases metrics.
    METRICS_FIELDS = ("epoch", "tokens_seen", "loss", "grad_norm", "learning_rate", "tokens_per_s",
                      "peak_vram_bytes", "time")
    EVAL_FIELDS = ("epoch", "eval_loss", "time")
    SERIES = ("epoch", "tokens_seen", "loss", "eval_loss", "grad_norm", "learning_rate", "tokens_per_s",
              "peak_vram_bytes")

    id = models.BigAutoField(primary_key=True)
    # No separate index on run: UNIQUE(run, step) is the access path and already leads with run.
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="points", db_index=False)
    step = models.PositiveIntegerField()
    epoch = models.FloatField(null=True)
    tokens_seen = models.BigIntegerField(null=True)
    loss = models.FloatField(null=True)
    eval_loss = models.FloatField(null=True)
    grad_norm = models.FloatField(null=True)
    learning_rate = models.FloatField(null=True)
    tokens_per_s = models.FloatField(null=True)
    peak_vram_bytes = models.BigIntegerField(null=True)
    time = models.DateTimeField()

    class Meta:
        ordering = ["run", "step"]
        constraints = [models.UniqueConstraint(fields=["run", "step"], name="metricpoint_run_step_unique")]


class RunEvent(models.Model):
    """Every event of a run other than its metric points, in the order the engine sent them."""

    id = models.BigAutoField(primary_key=True)
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="events", db_index=False)
    seq = models.PositiveIntegerField()
    type = models.CharField(max_length=20)
    data = models.JSONField(default=dict)
    time = models.DateTimeField()

    class Meta:
        ordering = ["run", "seq"]
        constraints = [models.UniqueConstraint(fields=["run", "seq"], name="runevent_run_seq_unique")]


class Sample(models.Model):
    id = models.BigAutoField(primary_key=True)
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="samples")
    step = models.PositiveIntegerField()
    prompt = models.TextField()
    completion = models.TextField()
    time = models.DateTimeField()

    class Meta:
        ordering = ["run", "step", "id"]


class SeriesPack(models.Model):
    """One column of a finished run's metric points packed into one row (steps as int32, then the values as float64),
    so the Compare page reads a 100,000-step curve as one value instead of 100,000 rows. Derived data: rebuilt when
    the run's last_step no longer matches."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="+", db_index=False)
    column = models.CharField(max_length=20)
    last_step = models.PositiveIntegerField()
    points = models.PositiveIntegerField()
    data = models.BinaryField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "column"], name="seriespack_run_column_unique")]


class EvalSuite(models.Model):
    """A team's prompts with references and the metric that scores them (training/evaluation/metrics.py)."""

    class Format(models.TextChoices):
        PROMPT = "prompt_completion", "prompt and reference"
        MESSAGES = "messages", "chat (the last assistant turn is the reference)"
        HARNESS = "harness", "an lm-evaluation-harness task's documents"

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="eval_suites")
    name = models.CharField(max_length=200)
    path = models.CharField(max_length=1000, help_text="The checked JSONL on the shared var dir")
    format = models.CharField(max_length=20, choices=Format.choices)
    rows = models.PositiveIntegerField()
    sha256 = models.CharField(max_length=64)
    metric = models.CharField(max_length=30)
    labels = models.JSONField(default=list, blank=True, help_text="The label set of a classification suite")
    max_new_tokens = models.PositiveIntegerField(default=64)
    task_config = models.TextField(blank=True, help_text="metric lm_eval: the lm-evaluation-harness task's YAML")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["team", "name"], name="evalsuite_team_name_unique")]

    def __str__(self) -> str:
        return self.name


class Evaluation(models.Model):
    """One suite's outputs from one model: a run's adapter (at its end or a checkpoint), the same with its adapters
    disabled, or the base model alone (run empty), which is generated once per model, suite and decoding and then
    reused (cache_key)."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED})

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="evaluations")
    suite = models.ForeignKey(EvalSuite, on_delete=models.CASCADE, related_name="evaluations")
    run = models.ForeignKey(Run, on_delete=models.CASCADE, null=True, blank=True, related_name="evaluations")
    model = models.CharField(max_length=1000, help_text="The base model")
    adapter_path = models.CharField(max_length=1000, blank=True)
    checkpoint_step = models.PositiveIntegerField(null=True, blank=True, help_text="Empty: the run's final adapter")
    adapters = models.CharField(max_length=3, default="on", help_text="off: the adapter loaded, then disabled")
    decoding = models.JSONField(default=dict, help_text="max_new_tokens, temperature, top_p, seed")
    cache_key = models.CharField(max_length=64, blank=True, db_index=True,
                                 help_text="For a base-model evaluation: model, suite content and decoding")
    queue = models.CharField(max_length=100)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    figures = models.JSONField(default=dict, blank=True)
    examples_per_s = models.FloatField(null=True, blank=True)
    error = models.TextField(blank=True)
    worker_name = models.CharField(max_length=200, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.suite} on {'run #%s' % self.run_id if self.run_id else self.model}"

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL


class EvalExample(models.Model):
    id = models.BigAutoField(primary_key=True)
    evaluation = models.ForeignKey(Evaluation, on_delete=models.CASCADE, related_name="examples")
    index = models.PositiveIntegerField()
    prompt = models.TextField()
    reference = models.TextField()
    output = models.TextField()
    score = models.FloatField()
    label = models.CharField(max_length=200, blank=True, help_text="Classification: the output's label")

    class Meta:
        ordering = ["evaluation", "index"]
        constraints = [models.UniqueConstraint(fields=["evaluation", "index"], name="evalexample_unique")]


class LoftqCheck(models.Model):
    """loftq_config's check before training (training/engine/loftq_check.py): the 4-bit model's logits against full
    precision with standard init and with LoftQ, on the first rows of a dataset. Needs a GPU worker."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="loftq_checks")
    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="+")
    model = models.CharField(max_length=1000)
    spec = models.JSONField(default=dict, help_text="r, lora_alpha, target_modules, loftq pairs, samples, max_length")
    queue = models.CharField(max_length=100)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    results = models.JSONField(default=list, blank=True)
    error = models.TextField(blank=True)
    worker_name = models.CharField(max_length=200, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]


class PlaygroundSession(models.Model):
    """A run's adapter (final or a checkpoint) loaded by a worker of the run's queue beside its base model (the same
    weights with the adapters off) or beside another run of the team on the same base model, answering the
    playground's prompts until it has been idle TUNEBOARD_PLAYGROUND_IDLE_S (training/playground/)."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        LOADING = "loading", "Loading"
        READY = "ready", "Ready"
        ENDED = "ended", "Released"
        FAILED = "failed", "Failed"

    LIVE = frozenset({Status.QUEUED, Status.LOADING, Status.READY})

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="playground_sessions")
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="playground_sessions")
    checkpoint_step = models.PositiveIntegerField(null=True, blank=True, help_text="Empty: the run's final adapter")
    adapter_path = models.CharField(max_length=1000)
    beside_run = models.ForeignKey(Run, on_delete=models.CASCADE, null=True, blank=True, related_name="+",
                                   help_text="Empty: beside the base model")
    beside_checkpoint_step = models.PositiveIntegerField(null=True, blank=True)
    beside_adapter_path = models.CharField(max_length=1000, blank=True)
    model = models.CharField(max_length=1000, help_text="The base model both sides share")
    queue = models.CharField(max_length=100)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    progress = models.JSONField(default=dict, blank=True, help_text="Loading: stage, done, total; ready: device, load_s")
    worker_name = models.CharField(max_length=200, blank=True)
    end_reason = models.CharField(max_length=200, blank=True)
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    ready_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"playground {self.id} of run #{self.run_id}"

    @property
    def is_live(self) -> bool:
        return self.status in self.LIVE


class MlflowSettings(models.Model):
    """A team's MLflow tracking server, which the team's runs mirror to when they ask (training/trackers/). Set by a
    team admin; the password and the token are never shown back."""

    team = models.OneToOneField(Team, on_delete=models.CASCADE, related_name="mlflow_settings")
    tracking_uri = models.CharField(max_length=500, help_text="The server's address, e.g. http://mlflow.internal:5000")
    experiment_name = models.CharField(max_length=200, help_text="The experiment the team's runs are logged in "
                                                                 "(created on the first run)")
    username = models.CharField(max_length=200, blank=True, help_text="For HTTP Basic auth, with the password")
    password = models.CharField(max_length=500, blank=True)
    token = models.CharField(max_length=2000, blank=True, help_text="For Bearer auth; used instead of a username")
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                   related_name="+")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "MLflow settings"
        verbose_name_plural = "MLflow settings"

    def __str__(self) -> str:
        return f"MLflow of {self.team}: {self.tracking_uri}"


class Export(models.Model):
    """A succeeded run exported for llama.cpp and Ollama on its worker: the merged model as a 16-bit GGUF and its
    quantizations, the adapter as a GGUF LoRA with its base's GGUF, and Modelfiles (training/engine/gguf_export.py).
    `files` lists what it wrote ({name, size, sha256, kind}); a download names one of them, never a path."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED})

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="exports")
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="exports")
    quantizations = models.JSONField(default=list, help_text="llama.cpp quantization names, e.g. q8_0, q4_k_m")
    merged_gguf = models.BooleanField(default=True, help_text="The merged model as GGUF (16-bit and quantizations)")
    lora_gguf = models.BooleanField(default=True, help_text="The adapter as a GGUF LoRA, with its base's GGUF")
    queue = models.CharField(max_length=100)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    progress = models.JSONField(default=dict, blank=True, help_text="stage, done, total, message")
    files = models.JSONField(default=list, blank=True)
    seconds = models.FloatField(null=True, blank=True)
    error = models.TextField(blank=True)
    worker_name = models.CharField(max_length=200, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"export #{self.id} of run #{self.run_id}"

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL
