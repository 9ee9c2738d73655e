"""Runs mirrored by their real worker: to TensorBoard, read back with tensorboard's EventAccumulator (the losses are
the run's stored points), and to a real `mlflow server`, read back with MLflow's own client (params, metric history
by step, status); a tracker whose server is down is a warning on a run that succeeds; a finished run's files are
written by `manage.py export_tensorboard` and downloaded as a zip from its page."""
import io
import zipfile

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from guidance.models import Finding
from tests.factories import tiny_overrides
from tests.integration.conftest import wait_for, wait_terminal
from tests.integration.trackers.conftest import free_port
from training.models import MetricPoint, MlflowSettings, Run, RunEvent
from training.runs import services
from training.trackers.points import value_text

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def board(log_dir) -> EventAccumulator:
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def mirrored_to_the_end(run: Run) -> EventAccumulator:
    """The run's own TensorBoard files once its worker wrote the end there (after the run's status: the worker
    closes the trackers when the training has ended)."""
    def ended():
        files = board(f"{run.artifact_dir}/tensorboard")
        return files if "status" in files.Tags()["tensors"] else None

    return wait_for(ended, timeout=60, what=f"run {run.id}'s trackers to close")


def stored(run: Run, field: str) -> list[tuple[int, float]]:
    return list(MetricPoint.objects.filter(run=run, **{f"{field}__isnull": False}).order_by("step")
                .values_list("step", field))


def assert_losses_match(accumulator: EventAccumulator, run: Run) -> None:
    """The file's losses are the run's stored ones (float32 in the file), at the same steps."""
    for tag, field in (("train/loss", "loss"), ("eval/loss", "eval_loss")):
        expected = stored(run, field)
        assert expected, f"the run stored no {field}"
        got = [(e.step, e.value) for e in accumulator.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in expected]
        for (_, value), (_, want) in zip(got, expected):
            assert value == pytest.approx(want, rel=1e-6)


def test_a_run_mirrors_to_tensorboard_and_to_a_real_mlflow_server(celery_worker, tiny_model, team_member,
                                                                   mlflow_server):
    team, user, dataset = team_member
    MlflowSettings.objects.create(team=team, tracking_uri=mlflow_server, experiment_name="tuneboard tests")
    run = services.run_create(team=team, user=user, dataset=dataset, trackers=["tensorboard", "mlflow"],
                              overrides=tiny_overrides(tiny_model, max_steps=12, eval_split=0.125, eval_steps=6))
    run = wait_terminal(run, timeout=180)
    assert run.status == Run.Status.SUCCEEDED, run.error
    assert not RunEvent.objects.filter(run=run, type="warning", data__code="tracker_failed").exists()

    files = mirrored_to_the_end(run)
    assert_losses_match(files, run)
    assert [e.step for e in files.Scalars("train/grad_norm")] == list(range(1, 13))
    assert {"train/learning_rate", "perf/tokens_per_s"} <= set(files.Tags()["scalars"])
    (config,) = files.Tensors("config")
    assert f"| learning_rate | `{value_text(run.config['learning_rate'])}` |" in config.tensor_proto.string_val[0].decode()
    (end,) = files.Tensors("status")
    assert end.tensor_proto.string_val[0].decode() == "succeeded at step 12"

    link = run.tracker_links["mlflow"]
    assert link["url"] == f"{mlflow_server}/#/experiments/{link['experiment_id']}/runs/{link['run_id']}"
    client = MlflowClient(tracking_uri=mlflow_server)
    mirrored = client.get_run(link["run_id"])
    assert mirrored.info.status == "FINISHED" and mirrored.info.run_name == f"#{run.id} {run.name}"
    assert client.get_experiment(link["experiment_id"]).name == "tuneboard tests"
    assert mirrored.data.params == {name: value_text(value)[:6000] for name, value in run.config.items()}
    assert mirrored.data.tags["tuneboard.run_id"] == str(run.id) and mirrored.data.tags["tuneboard.status"] == "succeeded"
    for key in ("loss", "eval_loss", "grad_norm", "learning_rate"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(link["run_id"], key))
        assert history == stored(run, key), key  # doubles: exactly the stored values
    findings = list(Finding.objects.filter(run=run))
    assert {f"tuneboard.finding.{f.step}.{f.code}" for f in findings} <= set(mirrored.data.tags)

    page = client_for(user).get(f"/runs/{run.id}/")
    assert page.status_code == 200
    html = page.content.decode()
    assert f'href="{link["url"]}"' in html and f'href="/runs/{run.id}/tensorboard.zip"' in html
    download = client_for(user).get(f"/runs/{run.id}/tensorboard.zip")
    assert download.status_code == 200 and download["Content-Type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(b"".join(download.streaming_content))) as archive:
        names = archive.namelist()
        assert names and all(name.startswith(f"run-{run.id}/events.out.tfevents.") for name in names)


def test_a_tracker_whose_server_is_down_is_a_warning_and_the_run_succeeds(celery_worker, tiny_model, team_member,
                                                                           tmp_path):
    team, user, dataset = team_member
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    MlflowSettings.objects.create(team=team, tracking_uri=dead, experiment_name="nowhere", token="secret")
    run = services.run_create(team=team, user=user, dataset=dataset, trackers=["mlflow", "tensorboard"],
                              overrides=tiny_overrides(tiny_model, max_steps=12, eval_split=0.125, eval_steps=6))
    run = wait_terminal(run, timeout=180)
    assert run.status == Run.Status.SUCCEEDED, run.error
    (warning,) = RunEvent.objects.filter(run=run, type="warning", data__code="tracker_failed")
    assert warning.data["field"] == "trackers"
    assert warning.data["message"].startswith(f"MLflow: could not reach {dead} (")
    assert warning.data["message"].endswith("The run goes on without it.")
    assert "mlflow" not in run.tracker_links
    assert_losses_match(mirrored_to_the_end(run), run)  # the other tracker went on
    page = client_for(user).get(f"/runs/{run.id}/").content.decode()
    assert "could not reach" in page and "secret" not in page

    # Written again afterwards from what was stored, into DIR/run-<id>/, with every finding the run now has.
    Finding.objects.create(run=run, code="plateau_note", severity="info", step=11, title="Loss is flat",
                           message="raise the learning rate", parameters=["learning_rate"])
    out = io.StringIO()
    call_command("export_tensorboard", str(run.id), str(tmp_path / "export"), stdout=out)
    assert f"to {tmp_path / 'export' / f'run-{run.id}'}" in out.getvalue()
    exported = board(tmp_path / "export" / f"run-{run.id}")
    assert_losses_match(exported, run)
    findings = [(e.step, e.tensor_proto.string_val[0].decode()) for e in exported.Tensors("findings")]
    assert [step for step, _ in findings] == list(Finding.objects.filter(run=run).order_by("step", "code")
                                                  .values_list("step", flat=True))
    assert (11, "**Loss is flat** (plateau_note at step 11): raise the learning rate Look at: learning_rate.") \
        in findings
    (warned,) = exported.Tensors("warnings")
    assert "could not reach" in warned.tensor_proto.string_val[0].decode()
    with pytest.raises(CommandError, match="run_id: no run 999999"):
        call_command("export_tensorboard", "999999", str(tmp_path / "export"))
