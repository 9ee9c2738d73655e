"""The Workers page: each worker's queues, GPUs, heartbeat age and run; another team's run is not named."""
from datetime import timedelta

import pytest
from django.utils import timezone

from training.models import Worker

pytestmark = pytest.mark.django_db


def test_workers_show_gpus_heartbeat_and_current_run(world, member_client):
    Worker.objects.create(name="gpu@box1", hostname="box1", queues=["gpu"], pid=42, current_run=world.run,
                          gpus=[{"name": "NVIDIA H100 80GB HBM3", "memory_total": 80 * 1024**3,
                                 "memory_used": 20 * 1024**3, "utilization": 97.0}])
    Worker.objects.create(name="gpu@box2", hostname="box2", queues=["gpu", "cpu"], current_run=world.other_run,
                          last_heartbeat_at=timezone.now() - timedelta(minutes=5))
    Worker.objects.create(name="cpu@laptop", hostname="laptop", queues=["cpu"])
    html = member_client.get("/workers/").content.decode()
    for text in ("gpu@box1", "NVIDIA H100 80GB HBM3", "20.0\xa0GB / 80.0\xa0GB", "97% busy", "alpha run",
                 f'href="/runs/{world.run.id}/"', "gpu@box2", "silent", "5\xa0minutes ago", "busy (another team",
                 "cpu@laptop", "CPU only", "idle"):
        assert text in html, text
    assert "beta run" not in html and f'href="/runs/{world.other_run.id}/"' not in html


def test_no_workers_says_how_to_start_one(world, member_client):
    assert b"No worker has reported yet" in member_client.get("/workers/").content
