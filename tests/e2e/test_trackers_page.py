"""In a real browser: the Trackers page, where a team admin sets the team's MLflow server (a server that does not
answer is saved with a warning), and the page of a tiny run that mirrored to TensorBoard: its Trackers card's zip
holds the event files, and its "Predicted against measured" card sets the plan kept at creation beside what the
CPU run measured (no VRAM on a CPU, and a device other than the one predicted for, said as such)."""
import io
import zipfile

import pytest
from django.conf import settings

from tests.factories import make_dataset, make_member, make_team, make_user, tiny_overrides
from tests.integration.conftest import wait_for
from training.models import Run, Worker
from training.runs import services

from .conftest import free_port, log_in

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_an_admin_sets_the_mlflow_server_and_a_run_page_shows_its_trackers_and_its_plan(
        web_server, celery_worker, tiny_model, page, tmp_path, screenshot_path):
    team = make_team("Trackers lab")
    admin = make_member(team, role="admin", user=make_user("tracker-admin", password="tracker-password"))
    dataset = make_dataset(team, admin, rows=64, tmp_dir=tmp_path, name="chats")
    log_in(page, web_server, "tracker-admin", "tracker-password")

    page.click("nav >> text=Trackers")  # reached from the navigation bar
    page.wait_for_url(f"{web_server.url}/trackers/")
    form = page.locator(f"section[data-team='{team.slug}'] form.tracker-form")
    dead = f"http://127.0.0.1:{free_port()}"
    form.locator(f"#id_{team.slug}-tracking_uri").fill(dead)
    form.locator(f"#id_{team.slug}-experiment_name").fill("Lab runs")
    form.locator("button.primary").click()
    page.wait_for_load_state()
    body = page.inner_text("main")
    assert "Saved Trackers lab's MLflow server." in body and "could not use it yet" in body
    assert f"Server {dead}, experiment Lab runs, no sign-in." in page.inner_text(f"section[data-team='{team.slug}']")
    page.screenshot(path=str(screenshot_path("trackers.png")), full_page=False)

    # A GPU box on the queue beside the session's CPU worker: the plan is for its T4 (a queue of CPU workers only
    # gets no GPU figure), and the CPU worker, free first, trains the run.
    Worker.objects.create(name="box-t4-idle@lab", hostname="box-t4-idle", queues=[settings.TUNEBOARD_DEFAULT_QUEUE],
                          gpus=[{"name": "NVIDIA T4", "memory_total": 16 * 1024 ** 3, "memory_used": 0,
                                 "utilization": 0}])
    run = services.run_create(team=team, user=admin, dataset=dataset, queue=settings.TUNEBOARD_DEFAULT_QUEUE,
                              overrides=tiny_overrides(tiny_model, max_steps=8), trackers=["tensorboard"])
    assert run.plan.get("peak_bytes")  # the tiny model's folder is readable: the plan was made and kept
    wait_for(lambda: Run.objects.get(id=run.id).status == Run.Status.SUCCEEDED, timeout=180, what="the run's end")
    page.goto(f"{web_server.url}/runs/{run.id}/")
    assert page.inner_text("#trackers").startswith("Trackers") and "Mirrored to TensorBoard." in page.inner_text(
        "#trackers")
    response = page.request.get(web_server.url + page.get_attribute("#tensorboard-zip", "href"))
    assert response.status == 200
    names = zipfile.ZipFile(io.BytesIO(response.body())).namelist()
    assert any(n.startswith(f"run-{run.id}/") and ".tfevents." in n for n in names), names

    check = page.inner_text("#plan-check")
    assert check.startswith("Predicted against measured") and "Peak VRAM" in check and "Tokens/s" in check
    assert "—" in page.inner_text("#plan-check tr[data-check='Peak VRAM']")  # a CPU run measures no VRAM
    page.locator("#plan-check").scroll_into_view_if_needed()
    page.screenshot(path=str(screenshot_path("run-predicted.png")), full_page=False)
