"""In a real browser, with the real worker: the New run form's first layer is enough for a first run. The dataset and
the model are picked from their lists, the folded groups stay closed, and the run it starts trains to success."""
import pytest

from tests.factories import make_dataset, make_member, make_team, make_user
from training.models import Run

from .conftest import log_in

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_the_forms_first_layer_launches_a_run_with_the_model_picked_from_the_list(
        web_server, celery_worker, tiny_model, page, tmp_path, screenshot_path):
    team = make_team("First")
    user = make_member(team, user=make_user("first-timer", password="first-timer-password"))
    dataset = make_dataset(team, user, tmp_dir=tmp_path, name="support chats")
    log_in(page, web_server, "first-timer", "first-timer-password")
    page.goto(f"{web_server.url}/runs/new/")

    # The first layer: the dataset, the model and the few values a first run needs; the rest folded, closed.
    assert page.locator("details.config-group").count() == 4
    assert page.locator("details.config-group[open]").count() == 0
    assert not page.is_visible("#id_lora_dropout") and not page.is_visible("#id_preset")
    page.select_option("#id_dataset", str(dataset.id))
    listed = page.locator("#id_model_pick optgroup[label='Model folders on the workers'] option")
    # Each folder named by its path under its root (other tests' model folders may be listed beside it).
    labels = dict(listed.evaluate_all("options => options.map((o) => [o.value, o.textContent])"))
    assert labels[tiny_model].startswith("tiny-llama  in "), labels
    page.select_option("#id_model_pick", tiny_model)
    assert page.input_value("#id_model") == tiny_model  # the value the run gets, shown
    page.fill("#id_max_length", "128")
    page.fill("#id_max_steps", "4")
    # One recommended value per field, filled by its button.
    page.fill("#id_learning_rate", "0.001")
    page.locator("[data-use-recommended=learning_rate]").click()
    assert page.input_value("#id_learning_rate") == "0.0002"
    page.locator("#preflight-notes li").first.wait_for()  # the live review has answered for this config
    # r's recommended value is the review's for 64 rows, not a second, different one.
    page.wait_for_function("document.querySelector('[data-recommended-for=r] code').textContent === '8'")
    assert "r = 8" in page.inner_text('#preflight-notes [data-note=rank_for_dataset]')
    assert page.locator("[data-live-error-for]:visible").count() == 0
    page.screenshot(path=str(screenshot_path("run-form-two-layers.png")), full_page=True)

    assert page.locator("details.config-group[open]").count() == 0
    page.click("#run-form button[type=submit]")
    page.wait_for_url("**/runs/*/")
    run = Run.objects.get(team=team)
    assert run.config["model"] == tiny_model and run.config["max_steps"] == 4 and run.dataset == dataset
    page.wait_for_function("document.getElementById('run-status').textContent.trim() === 'Succeeded'",
                           timeout=240_000)
    run.refresh_from_db()
    assert run.status == Run.Status.SUCCEEDED and run.adapter_path
    assert page.js_errors == []
