"""The dataset flow in Chromium: upload a file whose columns need mapping, map them, start the statistics, watch
the cpu worker's progress finish and see the token-length histogram, the preview and the advice."""
import json

import pytest
from django.conf import settings

from tests.factories import make_member, make_team, make_user
from tests.workers import start_worker, stop_worker
from training.models import Dataset

from .conftest import log_in

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def cpu_worker(tmp_path):
    worker = start_worker(queue=settings.TUNEBOARD_CPU_QUEUE, name=f"cpu-e2e-{tmp_path.name}@test",
                          log=tmp_path / "cpu-worker.log")
    yield worker
    stop_worker(worker)


def test_upload_map_columns_and_see_the_statistics(web_server, page, cpu_worker, tiny_model, tmp_path,
                                                    screenshot_path):
    team = make_team("Data team")
    make_member(team, user=make_user("curator", password="curator-password"))
    file = tmp_path / "qa.jsonl"
    file.write_text("".join(json.dumps({"question": f"what colour is the thing number {i}?" + " really" * (i % 9),
                                        "answer": ["red", "green", "blue"][i % 3]}) + "\n" for i in range(300)))
    log_in(page, web_server, "curator", "curator-password")

    page.goto(f"{web_server.url}/datasets/")
    page.fill("#id_name", "colour questions")
    page.set_input_files("#id_file", str(file))
    page.click("form button.primary")
    # The columns name no format: the page says so and offers them for the mapping.
    assert "the columns (question, answer) match no single format" in page.inner_text("[data-field=format]")
    assert page.locator("details.column-mapping[open]").count() == 1
    page.select_option("#id_format", "prompt_completion")
    page.fill("#id_column_prompt", "question")
    page.fill("#id_column_completion", "answer")
    page.set_input_files("#id_file", str(file))
    page.click("form button.primary")
    page.wait_for_url(f"{web_server.url}/datasets/*/")
    dataset = Dataset.objects.get(name="colour questions")
    assert dataset.rows == 300 and dataset.format == "prompt_completion"

    page.fill("#id_model", tiny_model)
    page.fill("#id_max_length", "24")
    page.fill("#id_eval_ratio", "0.1")
    with page.expect_navigation():
        page.click("form button.primary")
    # The page shows the task's progress bar until it ends, then reloads with the statistics.
    assert page.get_attribute("#profile", "data-state") in ("queued", "running")
    assert page.locator("#profile-bar").count() == 1
    page.wait_for_selector("#length-histogram[data-drawn='1'] .main-svg", timeout=60_000)
    assert page.locator("#length-histogram .bar, #length-histogram .point").count() > 0
    stats = Dataset.objects.get(id=dataset.id).stats["profile"]["result"]
    assert page.inner_text("#stat-lengths") == f"{stats['p50']} / {stats['p95']} / {stats['max']}"
    assert "r 4–8" in page.inner_text("#advice") and stats["train_rows"] == 270
    assert page.locator("#preview .tok.loss").count() > 0
    page.screenshot(path=str(screenshot_path("dataset.png")), full_page=True)
    assert page.js_errors == []
