"""Test data made the way the app makes it: teams and members directly, datasets and runs through services."""
from __future__ import annotations

import io
import itertools
import json
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import User

from dashboard.models import Membership, Team
from training.datasets import services as dataset_services
from training.engine.tiny import write_dataset
from training.models import Dataset, Preset, Run
from training.runs import services

_ids = itertools.count(1)


def make_user(username: str | None = None, password: str = "pw-for-tests") -> User:
    return User.objects.create_user(username=username or f"user{next(_ids)}", password=password)


def make_team(name: str | None = None) -> Team:
    n = next(_ids)
    return Team.objects.create(name=name or f"Team {n}", slug=f"team-{n}")


def make_member(team: Team, role: str = Membership.Role.MEMBER, user: User | None = None) -> User:
    user = user or make_user()
    Membership.objects.create(user=user, team=team, role=role)
    return user


def make_dataset(team: Team, user: User, *, rows: int = 64, fmt: str = "messages", tmp_dir: Path,
                 name: str | None = None, system: str | None = None) -> Dataset:
    """The tiny chat dataset; with `system`, every messages row starts with that system turn."""
    path = write_dataset(Path(tmp_dir) / f"data-{next(_ids)}.jsonl", n=rows, fmt=fmt)
    data = path.read_bytes()
    if system is not None:
        rows_ = [json.loads(line) for line in data.decode().splitlines()]
        for row in rows_:
            row["messages"].insert(0, {"role": "system", "content": system})
        data = "".join(json.dumps(row) + "\n" for row in rows_).encode()
    return dataset_services.dataset_create_from_upload(team=team, user=user, name=name or f"data {next(_ids)}",
                                               file=io.BytesIO(data))


def make_preset(team: Team | None = None, name: str | None = None, **config) -> Preset:
    preset = Preset(team=team, name=name or f"preset {next(_ids)}", config=config)
    preset.full_clean()
    preset.save()
    return preset


def tiny_overrides(model: str, **overrides) -> dict:
    """A tiny CPU job: seconds, not minutes."""
    return {
        "model": model, "backend": "hf", "optim": "adamw_torch", "max_length": 128,
        "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1, "max_steps": 20,
        "warmup_steps": 0, "logging_steps": 1, **overrides,
    }


def idle_queue() -> str:
    """A queue no test worker consumes: a run sent there stays queued (and sends no live messages)."""
    return f"{settings.TUNEBOARD_DEFAULT_QUEUE}-idle"


def make_run(team: Team, user: User, dataset: Dataset, *, queue: str | None = None, **overrides) -> Run:
    return services.run_create(team=team, user=user, dataset=dataset, queue=queue or idle_queue(),
                               overrides=tiny_overrides("tiny-model", **overrides))
