"""In a real browser: a sweep whose winner is the largest rank swept says so under the phase's verdict, redrawn
live when the verdict arrives, and its "Sweep these values" button opens the New sweep form built on the winner's
run with the next ranks filled. Takes docs/sweep-beyond.png."""
import re

import pytest

from tests.factories import idle_queue, make_dataset, make_member, make_team, make_user, tiny_overrides
from training.live import send
from training.models import Run, Sweep
from training.sweeps import services
from training.sweeps.selectors import sweep_state

from .conftest import log_in

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_a_winner_at_the_top_of_the_ranks_offers_the_next_ones(web_server, page, tmp_path, screenshot_path):
    team = make_team("Edge team")
    user = make_member(team, user=make_user("edgy", password="edgy-password"))
    dataset = make_dataset(team, user, rows=64, tmp_dir=tmp_path, name="colours")
    sweep = services.sweep_create(
        team=team, user=user, template="r", dataset=dataset, queue=idle_queue(), params={"values": [2, 4]},
        name="ranks", overrides=tiny_overrides("tiny-model", max_steps=12, eval_split=0.2, eval_steps=6))
    log_in(page, web_server, "edgy", "edgy-password")
    page.goto(f"{web_server.url}/sweeps/{sweep.id}/")
    page.wait_for_function("() => document.getElementById('live-state').dataset.state === 'live'")
    assert page.locator(".beyond").count() == 0

    # The verdict as the advance task writes it (r = 4, the largest swept, wins), sent as the services send it.
    phase = sweep.phases.get()
    winner = phase.members.get(name="r=4")
    Run.objects.filter(sweep=sweep).update(status=Run.Status.SUCCEEDED, adapter_path="/var/adapters/x")
    phase.verdict = {"rule": "smallest_within_tolerance", "winner": "r=4", "ties": [], "invalid": [], "diverged": [],
                     "failed": [], "pruned": [], "details": {},
                     "text": "r = 4: the best eval loss, 0.912, with no smaller rank within the 1% tolerance of it"}
    phase.save()
    Sweep.objects.filter(id=sweep.id).update(status=Sweep.Status.FINISHED, winner=winner,
                                             verdict=f"{phase.title}: {phase.verdict['text']}")
    assert send.send_sweep_state(sweep.id, sweep_state(Sweep.objects.get(id=sweep.id)))

    note = page.locator("[data-beyond='0']")
    note.wait_for()
    assert note.inner_text().startswith("r = 4 won as the largest value swept (2, 4): the best may lie above it. "
                                        "Next: 8, 16, with r = 4 rerun beside them at the same budget.")
    page.screenshot(path=str(screenshot_path("sweep-beyond.png")), full_page=True)
    note.locator("a", has_text="Sweep these values").click()
    page.wait_for_url(re.compile(r"/sweeps/new/\?"))
    assert page.input_value("#id_template") == "r" and page.input_value("#id_base_run") == str(winner.run_id)
    assert page.input_value("#id_values") == "4, 8, 16"
    # The preview lists the three members the follow-up sweep would train.
    page.wait_for_function("() => document.querySelectorAll('#preview-members li').length === 3")
    assert not page.js_errors, page.js_errors
