"""The Django side of the trackers: the trackers a run may ask for, a team's MLflow server, the observer that mirrors
a run from its worker (warnings and links written back on the run), and a run's TensorBoard files written from what
was stored (a finished run's export and download)."""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator, Sequence

from django.core.exceptions import ValidationError
from django.urls import reverse

from dashboard.models import Team
from guidance.models import Finding
from training.access import require_role
from training.models import MetricPoint, MlflowSettings, Run, RunEvent
from training.trackers import tensorboard
from training.trackers.mirror import Mirror, TrackerWriter
from training.trackers.mlflow_rest import MlflowServer, MlflowWriter
from training.trackers.points import (
    MLFLOW,
    TENSORBOARD,
    TRACKERS,
    VALUE_FIELDS,
    FindingNote,
    Point,
    RunEnd,
    point_from_event,
)

log = logging.getLogger(__name__)

# How long a run's worker waits, once the run has ended, for its trackers to take the rest (its slot is held).
CLOSE_WAIT_S = 30
WARNING_CODE = "tracker_failed"


def trackers_check(*, team: Team, trackers: Sequence[str]) -> list[str]:
    """The trackers a new run of `team` mirrors to, checked: known names, and MLflow only where the team has a
    server. ValidationError on field 'trackers'."""
    names = list(dict.fromkeys(trackers or ()))
    for name in names:
        if name not in TRACKERS:
            raise ValidationError({"trackers": f"no tracker {name!r}; choose from {', '.join(TRACKERS)}"})
    if MLFLOW in names and not MlflowSettings.objects.filter(team=team).exists():
        raise ValidationError({"trackers": f"team {team.name} has no MLflow server yet; a team admin sets one on "
                                           f"the Trackers page ({reverse('team_trackers', args=[team.slug])})"})
    return names


def mlflow_server_for(team_id: int) -> MlflowServer | None:
    settings = MlflowSettings.objects.filter(team_id=team_id).first()
    if settings is None:
        return None
    return MlflowServer(uri=settings.tracking_uri, experiment=settings.experiment_name, username=settings.username,
                        password=settings.password, token=settings.token)


def mlflow_settings_save(*, team: Team, user, values: dict[str, Any]) -> MlflowSettings:
    """Save a team's MLflow server (a team admin only). A blank password or token keeps the stored one unless
    `values['clear_secrets']`; `values` are the form's cleaned fields."""
    require_role(user=user, team=team, role="admin", action="Setting the team's MLflow server")
    current = MlflowSettings.objects.filter(team=team).first() or MlflowSettings(team=team)
    current.tracking_uri = values["tracking_uri"]
    current.experiment_name = values["experiment_name"]
    current.username = values.get("username") or ""
    if values.get("clear_secrets"):
        current.password = current.token = ""
    current.password = values.get("password") or current.password
    current.token = values.get("token") or current.token
    if current.username and not current.password:
        raise ValidationError({"password": "a username needs its password"})
    current.updated_by = user
    current.save()
    return current


def mlflow_settings_delete(*, team: Team, user) -> None:
    require_role(user=user, team=team, role="admin", action="Removing the team's MLflow server")
    MlflowSettings.objects.filter(team=team).delete()


def _finding_note(finding: Finding) -> FindingNote:
    return FindingNote(step=finding.step, code=finding.code, title=finding.title, message=finding.message,
                       parameters=tuple(str(p) for p in finding.parameters or ()))


def _run_end(run: Run) -> RunEnd:
    return RunEnd(status=run.status, step=run.last_step,
                  error=f"{run.error_class}: {run.error}"[:1000] if run.error else "")


class RunMirror:
    """The observer a run's worker trains with when the run asked for trackers: each stored point and finding goes to
    the mirror's queue (never waiting), and what the trackers report comes back here, on the recorder's thread, as
    a warning event on the run (a tracker that failed) or its links (the MLflow run's address)."""

    def __init__(self, run: Run, mirror: Mirror, *, warnings: Sequence[str] = ()):
        self.run, self.mirror = run, mirror
        self.recorder = None
        self._warnings = list(warnings)
        self._links: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"RunMirror(run {self.run.id}, {', '.join(self.mirror.writers) or 'none'})"

    def attach(self, recorder) -> None:
        self.recorder = recorder

    def __call__(self, event: dict[str, Any], findings: list[Finding]) -> None:
        point = point_from_event(event)
        if point is not None:
            self.mirror.put_points([point])
        for finding in findings:
            self.mirror.put_finding(_finding_note(finding))
        self._take_reports()  # and returns None: it never asks the run to stop

    def close(self) -> None:
        """Once the run has ended: its end to the trackers, then wait (a while) for them to take everything."""
        run = Run.objects.filter(id=self.run.id).first()
        if run is None:
            self.mirror.close(RunEnd(status="lost", step=0, error="the run was deleted"), wait_s=0)
            return
        self.mirror.close(_run_end(run), wait_s=CLOSE_WAIT_S)
        self._take_reports()
        if self.mirror.dropped:
            rewritten = ""
            if TENSORBOARD in self.mirror.writers and TENSORBOARD not in self.mirror.failed:
                tensorboard_write(run=run, log_dir=Path(run.artifact_dir) / tensorboard.FOLDER)
                rewritten = "; TensorBoard's files were rewritten from the stored run"
            self._warn(f"{self.mirror.dropped} events were not mirrored: the trackers fell behind the run (more than "
                       f"{self.mirror.capacity} waiting){rewritten}")

    def _take_reports(self) -> None:
        warnings, self._warnings = self._warnings, []
        for report in self.mirror.take_reports():
            if report.failed:
                warnings.append(f"{report.tracker}: {report.message}. The run goes on without it.")
            elif report.links:
                self._links[report.key] = report.links
                links = Run.objects.filter(id=self.run.id).values_list("tracker_links", flat=True).first() or {}
                Run.objects.filter(id=self.run.id).update(tracker_links={**links, **self._links})
        for message in warnings:
            self._warn(message)

    def _warn(self, message: str) -> None:
        log.warning("run %s: %s", self.run.id, message)
        if self.recorder is not None:  # in order with the run's other events, and live on its page
            self.recorder.record({"type": "warning", "code": WARNING_CODE, "field": "trackers", "message": message,
                                  "time": time.time()})


def mirror_for(run: Run) -> RunMirror | None:
    """The observer that mirrors `run` to the trackers it asked for, its thread started; None when it asked for none."""
    if not run.trackers:
        return None
    writers: dict[str, TrackerWriter] = {}
    warnings = []
    if TENSORBOARD in run.trackers:
        writers[TENSORBOARD] = tensorboard.TensorBoardWriter(Path(run.artifact_dir) / tensorboard.FOLDER)
    if MLFLOW in run.trackers:
        server = mlflow_server_for(run.team_id)
        if server is None:
            warnings.append("MLflow: the team has no MLflow server any more (it was removed after the run was "
                            "created). The run goes on without it.")
        else:
            writers[MLFLOW] = MlflowWriter(server, run_name=f"#{run.id} {run.name}", user=_username(run),
                                           tags=_mlflow_tags(run))
    mirror = Mirror(writers, config=run.config, title=f"#{run.id} {run.name}", start_time=time.time())
    mirror.start()
    return RunMirror(run, mirror, warnings=warnings)


def _username(run: Run) -> str:
    return run.created_by.get_username() if run.created_by_id else ""


def _mlflow_tags(run: Run) -> dict[str, str]:
    tags = {"tuneboard.run_id": str(run.id), "tuneboard.team": run.team.slug, "tuneboard.dataset": run.dataset.name}
    if run.resumed_from_id:
        tags["tuneboard.resumed_from"] = str(run.resumed_from_id)
    if run.sweep_id:
        tags["tuneboard.sweep_id"] = str(run.sweep_id)
    return tags


@contextmanager
def mirrored(run: Run) -> Iterator[list[RunMirror]]:
    """The observers that mirror `run` while it trains (none, or one), closed when the block ends."""
    mirror = mirror_for(run)
    try:
        yield [mirror] if mirror is not None else []
    finally:
        if mirror is not None:
            try:
                mirror.close()
            except Exception:  # noqa: BLE001 - the run has ended; its trackers must not fail the task
                log.exception("run %s: closing its trackers failed", run.id)


def tracker_links(run: Run) -> dict[str, Any]:
    """What the run page shows of its trackers: the names it mirrors to, the MLflow run's address once the worker
    has made it, and the TensorBoard download (its own files, or written from what was stored once it ended)."""
    mlflow = (run.tracker_links or {}).get(MLFLOW) or {}
    return {"names": [TRACKERS[name] for name in run.trackers or () if name in TRACKERS],
            "mlflow_url": mlflow.get("url", ""),
            "tensorboard_url": reverse("run_tensorboard_zip", args=[run.id])
            if TENSORBOARD in (run.trackers or ()) or run.is_terminal else ""}


# A finished run's files, from what was stored ------------------------------------------------------------------

def _stored_points(run: Run) -> Iterator[Point]:
    rows = (MetricPoint.objects.filter(run=run).order_by("step")
            .values_list("step", "time", *VALUE_FIELDS).iterator(chunk_size=5000))
    for step, when, *values in rows:
        yield Point(step=step, time=when.timestamp(),
                    values={name: float(value) for name, value in zip(VALUE_FIELDS, values) if value is not None})


def tensorboard_write(*, run: Run, log_dir: Path) -> Path:
    """Write `run`'s TensorBoard event file into `log_dir` from its stored points, findings, warnings and end (the
    files the live mirror writes, for any run, afterwards)."""
    findings = [_finding_note(f) for f in Finding.objects.filter(run=run).order_by("step", "code")]
    warnings = [("warnings", f"`{e.data.get('field', '')}` {e.data.get('message', '')}", 0)
                for e in RunEvent.objects.filter(run=run, type="warning").order_by("seq")]
    end = _run_end(run) if run.is_terminal else None
    start = run.started_at or run.created_at
    return tensorboard.write_run(log_dir, config=run.config, title=f"#{run.id} {run.name}", points=_stored_points(run),
                                 findings=findings, notes=warnings, end=end,
                                 start_time=start.timestamp() if start else None)


def tensorboard_export(*, run: Run, directory: Path) -> Path:
    """A finished run's event files in `directory`/run-<id>/ (made if missing); returns that folder."""
    if not run.is_terminal:
        raise ValidationError({"run": f"run {run.id} is {run.status}; export it once it has ended (its live files "
                                      f"are in {Path(run.artifact_dir) / tensorboard.FOLDER})"})
    return tensorboard_write(run=run, log_dir=Path(directory) / tensorboard.export_folder(run.id))


def tensorboard_zip(run: Run) -> IO[bytes]:
    """The run's TensorBoard files as a zip (its folder run-<id>/ inside): those its worker wrote where it mirrored
    to TensorBoard, otherwise, once it has ended, written now from what was stored. ValidationError when neither."""
    live = Path(run.artifact_dir) / tensorboard.FOLDER if run.artifact_dir else None
    with tempfile.TemporaryDirectory(prefix="tensorboard-") as scratch:
        if live is not None and any(live.glob(tensorboard.EVENT_FILE_GLOB)):
            source = Path(shutil.copytree(live, Path(scratch) / "copy"))  # a file the worker appends to, frozen
        elif run.is_terminal:
            source = tensorboard_write(run=run, log_dir=Path(scratch) / "written")
        else:
            raise ValidationError({"run": "no TensorBoard files yet: this run does not mirror to TensorBoard; they "
                                          "can be written once it has ended"})
        out = tempfile.SpooledTemporaryFile(max_size=32 * 2**20)  # noqa: SIM115 - the response streams and closes it
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(source.rglob("*")):
                if path.is_file():
                    archive.write(path, f"{tensorboard.export_folder(run.id)}/{path.relative_to(source)}")
        out.seek(0)
        return out
