"""Warm workers on a real Celery worker with the tiny model (CPU, hf backend): a team's next run starts in the
process its last run left warm, with the losses of the same config run cold; another team's run never gets that
process; a stopped run's process is not reused."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from tests.factories import make_dataset, make_member, make_team, tiny_overrides
from tests.integration.conftest import wait_for, wait_for_run, wait_terminal
from tests.workers import ROOT, start_worker, stop_worker
from training.models import MetricPoint, Run, RunEvent
from training.runs import services

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(420)]


@pytest.fixture
def warm_worker(tmp_path):
    """A worker with warm workers on (a CPU worker has them off by default), on a queue of its own."""
    worker = start_worker(queue=f"{settings.TUNEBOARD_DEFAULT_QUEUE}-warm", name=f"warm-{tmp_path.name}@test",
                          log=tmp_path / "warm-worker.log", env={"TUNEBOARD_WARM_WORKERS": "1"})
    yield worker
    stop_worker(worker)


def a_team(tmp_path):
    team = make_team()
    user = make_member(team)
    return team, user, make_dataset(team, user, tmp_dir=tmp_path)


def train(worker, member, model, **overrides) -> Run:
    team, user, dataset = member
    return services.run_create(team=team, user=user, dataset=dataset, queue=worker.queue,
                               overrides=tiny_overrides(model, **{"max_steps": 8, **overrides}))


def succeeded(run: Run) -> Run:
    run = wait_terminal(run, timeout=240)
    assert run.status == Run.Status.SUCCEEDED, f"{run.error}\n{run.log_tail[-2000:]}"
    return run


def losses(run: Run) -> list[tuple[int, float, int]]:
    return list(MetricPoint.objects.filter(run=run, loss__isnull=False).order_by("step")
                .values_list("step", "loss", "tokens_seen"))


def cold_losses(config: dict, tmp_path: Path) -> list[tuple[int, float, int]]:
    """The same config trained by `python -m training.engine run` in a process of its own."""
    path = tmp_path / "cold.json"
    path.write_text(json.dumps({**config, "output_dir": str(tmp_path / "cold")}))
    out = subprocess.run([sys.executable, "-m", "training.engine", "run", str(path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=240, env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    events = [json.loads(line) for line in out.stdout.splitlines()]
    assert events and events[-1]["type"] == "finished", out.stderr[-3000:]
    return [(e["step"], e["loss"], e["tokens_seen"]) for e in events if e["type"] == "metrics"]


def warm_children(worker) -> set[int]:
    """The worker's warm processes now (python -m training.engine warm, its children)."""
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == worker.process.pid and b"training.engine" in cmdline and b"warm" in cmdline:
            found.add(int(proc.name))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_teams_next_run_starts_warm_and_trains_as_a_cold_run(warm_worker, tiny_model, tmp_path):
    a, b = a_team(tmp_path), a_team(tmp_path)
    first = succeeded(train(warm_worker, a, tiny_model, seed=1, random_state=1))
    # Another seed, data order, rank, dropout and learning rate: nothing of the first run may reach it.
    second = succeeded(train(warm_worker, a, tiny_model, seed=5, random_state=9, r=8, lora_alpha=8, lora_dropout=0.1,
                             learning_rate=1e-3))
    assert second.started["pid"] == first.started["pid"]
    assert (second.started["warm_process"], second.started["base_kept"]) == (True, True)
    assert second.started["first_step_s"] < first.started["first_step_s"]
    note = RunEvent.objects.get(run=second, type="log", data__first_step_s__isnull=False)
    assert "base model kept from the previous run" in note.data["message"]
    assert losses(second) == cold_losses(second.config, tmp_path)
    assert len(losses(second)) == 8

    # Team B: team A's process (its model, its data) is killed before B's run, which gets the fresh spare.
    kept = first.started["pid"]
    spare = warm_children(warm_worker) - {kept}
    assert len(spare) == 1, spare
    other = succeeded(train(warm_worker, b, tiny_model))
    assert other.started["pid"] == spare.pop() != kept
    assert other.started["base_kept"] is False
    assert not alive(kept)


def test_a_stopped_runs_process_is_not_reused(warm_worker, tiny_model, tmp_path):
    a = a_team(tmp_path)
    long = train(warm_worker, a, tiny_model, max_steps=2000)
    wait_for_run(long, lambda r: r.last_step >= 2, timeout=180, what="the long run to train")
    services.run_stop(run=long, user=a[1])
    long = wait_terminal(long, timeout=120)
    assert long.status == Run.Status.STOPPED, long.error
    wait_for(lambda: not alive(long.started["pid"]), timeout=30, what="the stopped run's process to exit")
    after = succeeded(train(warm_worker, a, tiny_model))
    assert after.started["pid"] != long.started["pid"] and after.started["base_kept"] is False
