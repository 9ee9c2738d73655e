"""Services on the real database, without a worker: validation that names the field and saves nothing, queueing
on commit, the event recorder's upserts, lost-run detection, datasets and presets."""
import io
import json
import math
from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.admin.sites import AdminSite
from django.contrib.messages.storage.cookie import CookieStorage
from django.core.exceptions import ValidationError
from django.test import RequestFactory
from django.utils import timezone

from tests.factories import make_dataset, make_member, make_preset, make_run, make_team, tiny_overrides
from training import selectors, tasks
from training.admin import PresetAdmin
from training.datasets import services as dataset_services
from training.models import Dataset, MetricPoint, Preset, Run, RunEvent, Worker
from training.runs import execution, services

pytestmark = pytest.mark.django_db


@pytest.fixture
def member(tmp_path):
    team = make_team()
    user = make_member(team)
    return team, user, make_dataset(team, user, tmp_dir=tmp_path)


def field_errors(excinfo) -> dict:
    return {field: " ".join(messages) for field, messages in excinfo.value.message_dict.items()}


def test_run_create_names_every_bad_field_and_saves_nothing(member, django_capture_on_commit_callbacks):
    team, user, dataset = member
    with django_capture_on_commit_callbacks() as callbacks, pytest.raises(ValidationError) as excinfo:
        services.run_create(team=team, user=user, dataset=dataset,
                            overrides={"r": 0, "learning_rate": "fast", "train_file": "/etc/passwd", "bogus": 1})
    errors = field_errors(excinfo)
    assert set(errors) == {"model", "r", "learning_rate", "train_file", "bogus"}
    assert "is below 1: at least 1" in errors["r"] and "allowed fields" in errors["bogus"]
    assert "dataset" in errors["train_file"]
    assert Run.objects.count() == 0 and callbacks == []


def test_epochs_that_make_more_steps_than_a_step_column_holds_are_refused(member, tiny_model):
    team, user, dataset = member
    dataset.rows = 10_000_000  # as a large upload would count: epochs x rows is what overflows, not either alone
    dataset.save(update_fields=["rows"])
    with pytest.raises(ValidationError) as excinfo:
        services.run_create(team=team, user=user, dataset=dataset,
                            overrides={**tiny_overrides(tiny_model), "max_steps": None, "num_train_epochs": 10_000,
                                       "per_device_train_batch_size": 1, "gradient_accumulation_steps": 1})
    assert "at most 2,147,483,647" in field_errors(excinfo)["num_train_epochs"]
    assert Run.objects.count() == 0


def test_run_create_merges_preset_then_overrides_and_queues_on_commit(member, django_capture_on_commit_callbacks):
    team, user, dataset = member
    preset = make_preset(team, r=8, lora_alpha=16, learning_rate=1e-4)
    with django_capture_on_commit_callbacks() as callbacks:
        run = services.run_create(team=team, user=user, dataset=dataset, preset=preset,
                                  overrides={"model": "some/model", "learning_rate": 5e-4, "max_steps": 7})
    assert len(callbacks) == 1
    assert run.status == Run.Status.QUEUED and run.queue == settings.TUNEBOARD_DEFAULT_QUEUE
    assert run.config["r"] == 8 and run.config["lora_alpha"] == 16 and run.config["learning_rate"] == 5e-4
    assert run.config["train_file"] == dataset.path and run.config["output_dir"] == run.artifact_dir
    assert run.config["gradient_accumulation_steps"] == 4  # an engine default, frozen into the snapshot
    assert run.dataset_sha256 == dataset.sha256 and run.preset_version == 1 and run.total_steps == 7
    assert dataset.is_locked
    with pytest.raises(ValidationError) as excinfo:
        dataset.sha256 = "0" * 64
        dataset.save()
    assert "sha256" in field_errors(excinfo)


def test_a_run_stopped_while_queued_never_trains(member):
    team, user, dataset = member
    run = make_run(team, user, dataset)
    services.run_stop(run=run, user=user)
    assert run.status == Run.Status.STOPPED and run.finished_at is not None
    tasks.run_train(run.id)  # the delivery arrives after the stop
    run.refresh_from_db()
    assert run.status == Run.Status.STOPPED and not RunEvent.objects.filter(run=run).exists()
    services.run_stop(run=run, user=user)  # stopping twice changes nothing
    assert Run.objects.get(id=run.id).status == Run.Status.STOPPED


def test_the_recorder_merges_metrics_and_eval_per_step_and_keeps_non_finite_values(member):
    team, user, dataset = member
    run = make_run(team, user, dataset)
    run = services.run_claim(run_id=run.id, worker_name="recorder@test")
    recorder = execution.RunRecorder(run)
    recorder.record({"type": "metrics", "time": 1.0, "step": 1, "epoch": 0.1, "tokens_seen": 100, "loss": 2.5,
                     "grad_norm": 1.0, "learning_rate": 1e-4, "tokens_per_s": 50.0, "peak_vram_bytes": None})
    recorder.record({"type": "eval", "time": 2.0, "step": 1, "epoch": 0.1, "eval_loss": 2.7})
    recorder.record({"type": "eval", "time": 3.0, "step": 2, "epoch": 0.2, "eval_loss": 2.6})
    recorder.record({"type": "metrics", "time": 4.0, "step": 2, "epoch": 0.2, "tokens_seen": 200, "loss": "nan",
                     "grad_norm": "inf", "learning_rate": 1e-4, "tokens_per_s": 50.0, "peak_vram_bytes": None})
    first, second = MetricPoint.objects.filter(run=run).order_by("step")
    assert (first.loss, first.eval_loss, first.tokens_seen) == (2.5, 2.7, 100)
    assert math.isnan(second.loss) and second.grad_norm == math.inf and second.eval_loss == 2.6
    replay = [p for chunk in selectors.run_point_chunks(run) for p in chunk]
    assert [p["step"] for p in replay] == [1, 2]
    # What a browser receives must be valid JSON: NaN becomes the engine's "nan".
    from training.engine.events import json_safe

    text = json.dumps(json_safe(replay), allow_nan=False)
    assert '"loss": "nan"' in text and '"grad_norm": "inf"' in text
    recorder.record({"type": "started", "time": 5.0, "derived": {"total_steps": 10}, "versions": {"torch": "x"},
                     "trainable_params": 5, "pid": 1})
    run.refresh_from_db()
    assert run.status == Run.Status.RUNNING and run.total_steps == 10 and run.last_step == 2
    assert run.progress == 0.2
    # The runs table sorts on the best eval loss the recorder keeps: a higher one, or a NaN, leaves it.
    assert (run.best_eval_loss, run.best_eval_step) == (2.6, 2)
    recorder.record_many([{"type": "eval", "time": 6.0, "step": 3, "epoch": 0.3, "eval_loss": 2.65},
                          {"type": "eval", "time": 7.0, "step": 4, "epoch": 0.4, "eval_loss": "nan"}])
    run.refresh_from_db()
    assert (run.best_eval_loss, run.best_eval_step) == (2.6, 2)
    recorder.record({"type": "eval", "time": 8.0, "step": 5, "epoch": 0.5, "eval_loss": 2.1})
    run.refresh_from_db()
    assert (run.best_eval_loss, run.best_eval_step) == (2.1, 5)


def test_an_observer_that_stopped_the_run_has_the_follow_loop_ask_at_once(member):
    """An observer returning True (it moved the run to stopping) sets stop_asked, so the worker's loop reads the status
    and touches the stop file on this batch rather than at its next poll; one returning None or raising leaves it."""
    team, user, dataset = member
    run = services.run_claim(run_id=make_run(team, user, dataset).id, worker_name="recorder@test")
    seen = []

    def broken(event, findings):
        raise RuntimeError("an observer's bug")

    recorder = execution.RunRecorder(run, observers=[broken, lambda event, findings: seen.append(event["step"])])
    recorder.record({"type": "eval", "time": 1.0, "step": 1, "epoch": 0.1, "eval_loss": 2.7})
    assert seen == [1] and recorder.stop_asked is False
    recorder = execution.RunRecorder(run, observers=[lambda event, findings: event["step"] == 2])
    recorder.record({"type": "eval", "time": 2.0, "step": 2, "epoch": 0.2, "eval_loss": 2.6})
    assert recorder.stop_asked is True


def test_runs_of_a_silent_worker_or_one_that_moved_on_become_lost(member):
    team, user, dataset = member
    silent_run = services.run_claim(run_id=make_run(team, user, dataset).id, worker_name="silent@test")
    busy_run = services.run_claim(run_id=make_run(team, user, dataset).id, worker_name="alive@test")
    dropped_run = services.run_claim(run_id=make_run(team, user, dataset).id, worker_name="dropper@test")
    now = timezone.now()
    long_ago = now - timedelta(seconds=120)
    Run.objects.update(started_at=long_ago)
    Worker.objects.filter(name="silent@test").update(last_heartbeat_at=now - timedelta(seconds=51))
    services.run_release(run_id=dropped_run.id)  # alive, but not running it
    assert sorted(services.runs_mark_lost(now=now)) == [silent_run.id, dropped_run.id]
    assert services.runs_mark_lost(now=now) == []
    statuses = dict(Run.objects.values_list("id", "status"))
    assert statuses == {silent_run.id: "lost", busy_run.id: "starting", dropped_run.id: "lost"}
    assert "silent since" in Run.objects.get(id=silent_run.id).error


def test_a_worker_restarting_loses_what_it_was_running(member):
    team, user, dataset = member
    run = services.run_claim(run_id=make_run(team, user, dataset).id, worker_name="box@test")
    assert services.worker_runs_mark_lost(name="box@test") == [run.id]
    run.refresh_from_db()
    assert run.status == Run.Status.LOST and "restarted" in run.error


def test_a_changed_dataset_file_fails_the_run_before_training(member):
    team, user, dataset = member
    run = services.run_claim(run_id=make_run(team, user, dataset).id, worker_name="box@test")
    with open(dataset.path, "a") as fh:
        fh.write('{"text": "sneaked in"}\n')
    execution.run_execute(run=run)
    run.refresh_from_db()
    assert run.status == Run.Status.FAILED and run.error_class == "RunSetupError"
    assert "changed since the run was created" in run.error


def test_resume_needs_a_checkpoint_and_an_ended_run(member):
    team, user, dataset = member
    run = make_run(team, user, dataset)
    with pytest.raises(ValidationError, match="this one is queued"):
        services.run_resume(run=run, user=user)
    services.run_stop(run=run, user=user)
    with pytest.raises(ValidationError, match="no checkpoint"):
        services.run_resume(run=run, user=user)


def test_queue_positions_count_the_queued_runs_ahead_on_the_same_queue(member):
    team, user, dataset = member
    first, second = make_run(team, user, dataset), make_run(team, user, dataset)
    other = services.run_create(team=team, user=user, dataset=dataset, queue="a100",
                                overrides=tiny_overrides("m"))
    services.run_claim(run_id=first.id, worker_name="box@test")
    positions = {r.id: r.queue_position for r in selectors.run_list_for(user)}
    assert positions == {first.id: None, second.id: 1, other.id: 1}
    third = make_run(team, user, dataset)
    assert selectors.run_queue_position(third) == 2


def test_uploads_with_bad_rows_are_refused_naming_the_line(member):
    team, user, _ = member
    cases = {
        b'{"text": "ok"}\nnot json\n': ("file", "row 2: invalid JSON on line 2"),
        b'{"text": "ok"}\n{"prompt": "a", "completion": "b"}\n': ("file", "row 2, text: column 'text' is missing"),
        b'{"question": "?"}\n': ("format", "the columns (question) match no single format"),
        b"": ("file", "the file is empty"),
    }
    for content, (key, message) in cases.items():
        with pytest.raises(ValidationError) as excinfo:
            dataset_services.dataset_create_from_upload(team=team, user=user, name=f"bad {len(content)}",
                                                file=io.BytesIO(content))
        assert message in field_errors(excinfo)[key]
    assert Dataset.objects.filter(team=team).count() == 1
    with pytest.raises(ValidationError, match="already has a dataset"):
        dataset_services.dataset_create_from_upload(team=team, user=user, name=Dataset.objects.get().name,
                                            file=io.BytesIO(b'{"text": "x"}\n'))
    good = dataset_services.dataset_create_from_upload(team=team, user=user, name="pc",
                                               file=io.BytesIO(b'{"prompt": "a", "completion": "bc"}\n' * 3))
    assert (good.format, good.rows, good.size_bytes, good.stats["source"]["bytes"]) == ("prompt_completion", 3, 108, 108)


def test_preset_admin_shows_engine_errors_on_the_config_field_bumps_versions_and_duplicates(admin_user):
    admin = PresetAdmin(Preset, AdminSite())
    request = RequestFactory().post("/")
    request.user = admin_user
    form_class = admin.get_form(request)
    bad = form_class(data={"name": "bad", "config": json.dumps({"r": 0, "output_dir": "/x"}), "notes": ""})
    assert not bad.is_valid()
    assert any("r: 0 is below 1: at least 1" in e for e in bad.errors["config"])
    assert any("output_dir" in e for e in bad.errors["config"])
    good = form_class(data={"name": "small", "config": json.dumps({"r": 8}), "notes": ""})
    assert good.is_valid(), good.errors
    preset = good.save()
    assert preset.version == 1
    preset.config = {"r": 16}
    preset.save()
    assert Preset.objects.get(id=preset.id).version == 2
    preset.save()
    assert Preset.objects.get(id=preset.id).version == 2  # unchanged: no bump
    request._messages = CookieStorage(request)
    admin.duplicate(request, Preset.objects.filter(id=preset.id))
    admin.duplicate(request, Preset.objects.filter(id=preset.id))
    assert set(Preset.objects.values_list("name", "version")) == {("small", 2), ("small (copy)", 1),
                                                                   ("small (copy 2)", 1)}
