"""`tuneboard` end to end: the CLI run as a subprocess (python -m training.cli, what the entry point calls) against
the real server (daphne over real HTTP and websockets), the session's Celery worker training the tiny model."""
from __future__ import annotations

import csv
import io
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dashboard.tokens.services import token_create
from tests.e2e.conftest import ROOT
from tests.factories import idle_queue, make_member, make_team, make_user, tiny_overrides
from training.engine.tiny import write_dataset

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(400)]


@pytest.fixture
def token():
    team = make_team("Cli")
    user = make_member(team, user=make_user("cli-user"))
    return token_create(user=user, name="cli")[1]


def tuneboard(*args: str, home: Path, env: dict | None = None, stdin: str | None = None, timeout: float = 240):
    """The CLI in its own process and session (no terminal: the token prompt reads stdin), the config dir in home."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TUNEBOARD_")}
    environ.update({"XDG_CONFIG_HOME": str(home), "COLUMNS": "200", **(env or {})})
    return subprocess.run([sys.executable, "-m", "training.cli", *args], cwd=ROOT, env=environ, input=stdin,
                          capture_output=True, text=True, timeout=timeout, start_new_session=True, check=False)


def overrides(model: str, **extra) -> list[str]:
    out = []
    for name, value in tiny_overrides(model, **extra).items():
        out += ["--set", f"{name}={json.dumps(value) if not isinstance(value, str) else value}"]
    return out


def created_id(result, what: str = "run") -> int:
    assert result.returncode == 0, result.stdout + result.stderr
    return int(re.search(rf"^{what} (\d+):", result.stdout, re.MULTILINE).group(1))


def logged_in(server, token, home):
    result = tuneboard("login", home=home, stdin=f"{server.url}\n{token}\n")
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_login_upload_create_watch_to_success_metrics_list_show_compare(server, token, celery_worker, tiny_model,
                                                                         tmp_path):
    home = tmp_path / "home"
    result = logged_in(server, token, home)
    assert "as cli-user; teams: Cli (member)" in result.stdout
    stored = home / "tuneboard" / "config.json"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert json.loads(stored.read_text()) == {"url": server.url, "token": token}

    data = write_dataset(tmp_path / "chat.jsonl", n=64, fmt="messages")
    result = tuneboard("datasets", "upload", str(data), "--name", "chat", home=home)
    assert result.returncode == 0, result.stderr
    dataset = int(re.search(r"^dataset (\d+): chat \(64 rows, messages\)", result.stdout, re.MULTILINE).group(1))

    run = created_id(tuneboard("runs", "create", "--dataset", str(dataset), "--name", "cli run",
                               *overrides(tiny_model, max_steps=12), "--set", "r=4", "--set", "learning_rate=1e-4",
                               home=home))
    watched = tuneboard("runs", "watch", str(run), home=home)
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert f"run {run} succeeded at step 12" in watched.stdout
    assert re.search(rf"run {run} running step \d+/12 loss \d", watched.stdout)  # the live progress lines

    shown = tuneboard("runs", "show", str(run), home=home)
    detail = json.loads(shown.stdout)
    assert detail["status"] == "succeeded" and detail["config"]["r"] == 4
    assert detail["config"]["learning_rate"] == 1e-4

    metrics = tuneboard("runs", "metrics", str(run), "--csv", home=home)
    rows = list(csv.DictReader(io.StringIO(metrics.stdout)))
    assert metrics.returncode == 0 and [int(r["step"]) for r in rows] == list(range(1, 13))
    assert all(float(r["loss"]) > 0 for r in rows)

    second = created_id(tuneboard("runs", "create", "--dataset", str(dataset), "--name", "second",
                                  *overrides(tiny_model, max_steps=4), "--set", "r=8", "--watch", home=home))
    listed = tuneboard("runs", "list", home=home)
    assert listed.returncode == 0 and "cli run" in listed.stdout and "second" in listed.stdout
    exported = tuneboard("compare", str(run), str(second), "--export", "csv", home=home)
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert len(rows) == 12 + 4 and {r["run_id"] for r in rows} == {str(run), str(second)}
    compared = tuneboard("compare", str(run), str(second), home=home)
    assert compared.returncode == 0 and "r" in compared.stdout.split()

    # The ended run's TensorBoard files (it mirrored to none: written from what was stored), read back.
    exported = tuneboard("runs", "export", str(run), "--tensorboard", str(tmp_path / "tb"), home=home)
    assert exported.returncode == 0, exported.stdout + exported.stderr
    accumulator = EventAccumulator(str(tmp_path / "tb" / f"run-{run}")).Reload()
    assert [e.step for e in accumulator.Scalars("train/loss")] == list(range(1, 13))
    assert [e.value for e in accumulator.Scalars("train/loss")] == pytest.approx([float(r["loss"]) for r in rows
                                                                                  if r["run_id"] == str(run)])


def test_watching_a_run_that_fails_exits_3_with_its_error(server, token, celery_worker, tiny_model, tmp_path):
    home = tmp_path / "home"
    logged_in(server, token, home)
    data = write_dataset(tmp_path / "chat.jsonl", n=64, fmt="messages")
    upload = tuneboard("datasets", "upload", str(data), "--name", "chat", home=home)
    dataset = int(re.search(r"^dataset (\d+):", upload.stdout, re.MULTILINE).group(1))
    # 4-bit on a CPU worker: accepted by the API, refused by the engine as the run starts
    result = tuneboard("runs", "create", "--dataset", str(dataset), *overrides(tiny_model), "--set",
                       "load_in_4bit=true", "--watch", home=home)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "failed: ConfigError" in result.stderr and "load_in_4bit" in result.stderr
    run = int(re.search(r"^run (\d+):", result.stdout, re.MULTILINE).group(1))
    again = tuneboard("runs", "watch", str(run), home=home)  # a run that has already ended: the replay says so
    assert again.returncode == 3 and f"run {run} failed" in again.stderr


def test_refused_input_exits_2_naming_the_field_and_a_bad_token_1(server, token, tiny_model, tmp_path):
    home = tmp_path / "home"
    logged_in(server, token, home)
    data = write_dataset(tmp_path / "chat.jsonl", n=16, fmt="messages")
    upload = tuneboard("datasets", "upload", str(data), "--name", "chat", home=home)
    dataset = int(re.search(r"^dataset (\d+):", upload.stdout, re.MULTILINE).group(1))
    result = tuneboard("runs", "create", "--dataset", str(dataset), *overrides(tiny_model), "--set", "r=banana",
                       "--queue", idle_queue(), home=home)
    assert result.returncode == 2, result.stdout + result.stderr
    assert re.search(r"^\s+r: ", result.stderr, re.MULTILINE), result.stderr
    missing = tuneboard("runs", "create", "--dataset", "999999", home=home)
    assert missing.returncode == 2 and "dataset: no such dataset in your teams" in missing.stderr

    installed = subprocess.run([Path(sys.executable).parent / "tuneboard", "--help"], capture_output=True, text=True,
                               env={**os.environ, "COLUMNS": "200"}, timeout=60, check=False)
    assert installed.returncode == 0 and "3 the watched run or sweep did not succeed" in installed.stdout

    refused = tuneboard("runs", "list", home=home, env={"TUNEBOARD_TOKEN": "tb_" + "x" * 43})
    assert refused.returncode == 1 and "401" in refused.stderr
    bad_login = tuneboard("login", home=tmp_path / "other", stdin=f"{server.url}\nnot-a-token\n")
    assert bad_login.returncode == 1 and "401" in bad_login.stderr
    assert not (tmp_path / "other" / "tuneboard" / "config.json").exists()


def test_a_sweep_created_watched_and_stopped(server, token, tiny_model, tmp_path):
    home = tmp_path / "home"
    env = {"TUNEBOARD_URL": server.url, "TUNEBOARD_TOKEN": token}  # no login: the environment alone
    data = write_dataset(tmp_path / "chat.jsonl", n=64, fmt="messages")
    upload = tuneboard("datasets", "upload", str(data), "--name", "chat", home=home, env=env)
    dataset = int(re.search(r"^dataset (\d+):", upload.stdout, re.MULTILINE).group(1))
    created = tuneboard("sweeps", "create", "--template", "r", "--dataset", str(dataset), "--queue", idle_queue(),
                        *overrides(tiny_model, max_steps=10, eval_split=0.1, eval_steps=5),
                        "--param", "values=[2, 4]", home=home, env=env)
    sweep = created_id(created, "sweep")
    watcher = subprocess.Popen(
        [sys.executable, "-m", "training.cli", "sweeps", "watch", str(sweep), "--interval", "0.5"], cwd=ROOT,
        env={**os.environ, **env, "XDG_CONFIG_HOME": str(home), "COLUMNS": "200"}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stopped = tuneboard("sweeps", "stop", str(sweep), home=home, env=env)
        assert stopped.returncode == 0 and f"sweep {sweep} stopped" in stopped.stdout
        out, errors = watcher.communicate(timeout=60)
    finally:
        if watcher.poll() is None:
            watcher.kill()
    assert watcher.returncode == 3, out + errors
    assert "r=2" in out and "r=4" in out and f"sweep {sweep} stopped" in errors


def test_runs_create_from_a_run_takes_its_config_with_the_sets_over_it(server, token, tiny_model, tmp_path):
    home = tmp_path / "home"
    logged_in(server, token, home)
    data = write_dataset(tmp_path / "chat.jsonl", n=16, fmt="messages")
    upload = tuneboard("datasets", "upload", str(data), "--name", "chat", home=home)
    dataset = int(re.search(r"^dataset (\d+):", upload.stdout, re.MULTILINE).group(1))
    parent = created_id(tuneboard("runs", "create", "--dataset", str(dataset), *overrides(tiny_model, max_steps=7),
                                  "--queue", idle_queue(), home=home))
    child = tuneboard("runs", "create", "--from", str(parent), "--set", "learning_rate=1e-4", home=home)
    child_id = created_id(child)
    assert f"(from run {parent})" in child.stdout
    shown = json.loads(tuneboard("runs", "show", str(child_id), home=home).stdout)
    assert shown["parent"] == parent and shown["dataset"] == dataset and shown["queue"] == idle_queue()
    assert shown["config"]["learning_rate"] == 1e-4 and shown["config"]["max_steps"] == 7
    refused = tuneboard("runs", "create", "--from", str(parent), "--set", "learning_rate=3", home=home)
    assert refused.returncode == 2 and "learning_rate: 3 is above 1: at most 1" in refused.stderr
    neither = tuneboard("runs", "create", home=home)
    assert neither.returncode == 2 and "give --dataset, or --from RUN" in neither.stderr
