"""In a real browser: the Workers page of a GPU worker with slots (its GPU, the runs it trains, another team's run
counted but not named, 'n of m slots busy'), and the run list naming why a queued run waits (its held_reason: the
slots' admission or a GPU count no live worker has)."""
import pytest
from django.utils import timezone

from tests.factories import idle_queue, make_dataset, make_member, make_team, make_user, tiny_overrides
from training.models import Run, Worker
from training.runs import services

from .conftest import log_in

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
GiB = 1024 ** 3


def test_the_workers_page_shows_slots_and_the_run_list_why_a_run_waits(web_server, page, tmp_path, screenshot_path):
    team, other = make_team("Slots lab"), make_team("Neighbours")
    user = make_member(team, user=make_user("slotter", password="slotter-password"))
    stranger = make_member(other)
    data, their_data = make_dataset(team, user, tmp_dir=tmp_path), make_dataset(other, stranger, tmp_dir=tmp_path)
    queue = idle_queue()

    def run(t, u, d, name):
        return services.run_create(team=t, user=u, dataset=d, queue=queue, name=name,
                                   overrides=tiny_overrides("tiny-model"))

    mine, theirs, waiting = run(team, user, data, "rank 16"), run(other, stranger, their_data, "their secret run"), run(
        team, user, data, "rank 64")
    box = Worker.objects.create(name="gpu@h200-box", hostname="h200-box", queues=[queue], slots=4,
                                gpus=[{"name": "NVIDIA H200", "memory_total": 141 * GiB, "memory_used": 38 * GiB,
                                       "utilization": 71}], last_heartbeat_at=timezone.now())
    for r in (mine, theirs):
        Run.objects.filter(id=r.id).update(status=Run.Status.RUNNING, worker=box, started_at=timezone.now())
        box.current_runs.add(r)
    reason = ("waiting for gpu@h200-box: it needs 120.0 GiB (peak up to 108.6 GiB + 10% + 0.5 GiB CUDA context); "
              "the NVIDIA H200 of gpu@h200-box (141.0 GiB) has 103.0 GiB free")
    Run.objects.filter(id=waiting.id).update(held_reason=reason)

    log_in(page, web_server, "slotter", "slotter-password")
    page.goto(f"{web_server.url}/workers/")
    row = page.locator("table.workers tr", has_text="gpu@h200-box")
    text = row.inner_text()
    assert "NVIDIA H200" in text and "71% busy" in text and "rank 16" in text
    assert "their secret run" not in text and f"#{theirs.id}" not in text  # another team's run is not named
    assert "busy (another team's run)" in text and "2 of 4 slots busy" in text
    page.screenshot(path=str(screenshot_path("workers.png")), full_page=False)

    page.goto(f"{web_server.url}/runs/")
    held = page.locator(f"tr:has(a[href='/runs/{waiting.id}/']) .held-reason")
    assert held.inner_text() == reason
    assert page.locator(f"tr:has(a[href='/runs/{mine.id}/']) .held-reason").count() == 0
