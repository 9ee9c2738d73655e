"""The Workers page: each worker's queues, GPUs, heartbeat age and run; another team's run is not named."""
from datetime import timedelta

import pytest
from django.utils import timezone

from training.models import Worker

pytestmark = pytest.mark.django_db


def test_workers_show_gpus_heartbeat_and_current_run(world, member_client):
    Worker.objects.create(name="gpu@box1", hostname="box1", queues=["gpu"], pid=42,
                          gpus=[{"name": "NVIDIA H100 80GB HBM3", "memory_total": 80 * 1024**3,
                                 "memory_used": 20 * 1024**3, "utilization": 97.0}]).current_runs.add(world.run)
    Worker.objects.create(name="gpu@box2", hostname="box2", queues=["gpu", "cpu"],
                          last_heartbeat_at=timezone.now() - timedelta(minutes=5)).current_runs.add(world.other_run)
    Worker.objects.create(name="cpu@laptop", hostname="laptop", queues=["cpu"])
    html = member_client.get("/workers/").content.decode()
    for text in ("gpu@box1", "NVIDIA H100 80GB HBM3", "20.0\xa0GB / 80.0\xa0GB", "97% busy", "alpha run",
                 f'href="/runs/{world.run.id}/"', "gpu@box2", "silent", "5\xa0minutes ago", "busy (another team",
                 "cpu@laptop", "CPU only", "idle"):
        assert text in html, text
    assert "beta run" not in html and f'href="/runs/{world.other_run.id}/"' not in html


def test_a_worker_with_slots_lists_each_run_it_trains_and_how_many_slots_are_busy(world, member_client):
    worker = Worker.objects.create(name="gpu@big", hostname="big", queues=["gpu"], slots=4)
    worker.current_runs.add(world.run, world.other_run)
    html = member_client.get("/workers/").content.decode()
    assert "alpha run" in html and f'href="/runs/{world.run.id}/"' in html
    assert "busy (another team's run)" in html and "beta run" not in html
    assert "2 of 4 slots busy" in html and "idle" not in html


def test_no_workers_says_how_to_start_one(world, member_client):
    assert b"No worker has reported yet" in member_client.get("/workers/").content
