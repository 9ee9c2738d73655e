"""A sweep's page: its phases with rule, held fields, budget and verdict, each member's status and evidence, the
buttons its status allows, its actions (stop, resume, confirm, apply the winner) and the points its charts start
from; another team's sweep is a 404 everywhere; a viewer watches but cannot act."""
import json

import pytest
from django.utils import timezone

from dashboard.models import Membership
from tests.factories import idle_queue, make_member, tiny_overrides
from tests.functional.conftest import client_for
from training.models import MetricPoint, Preset, Run, Sweep, SweepMember
from training.sweeps import services

pytestmark = pytest.mark.django_db


def make_sweep(team, user, dataset, **kwargs) -> Sweep:
    return services.sweep_create(
        team=team, user=user, template="r", dataset=dataset, queue=idle_queue(), params={"values": [2, 4]},
        overrides=tiny_overrides("tiny-model", max_steps=12, eval_split=0.2, eval_steps=6), **kwargs)


@pytest.fixture
def sweep(world) -> Sweep:
    return make_sweep(world.team, world.member, world.dataset, name="ranks")


def page_data(response) -> dict:
    html = response.content.decode()
    start = html.index('<script id="sweep-data" type="application/json">') + len(
        '<script id="sweep-data" type="application/json">')
    return json.loads(html[start:html.index("</script>", start)])


def decide(sweep: Sweep, winner: str = "r=2") -> SweepMember:
    """The phase's verdict as the advance task writes it, and the sweep finished with that winner."""
    phase = sweep.phases.get()
    phase.verdict = {"rule": "smallest_within_tolerance", "winner": winner, "ties": [], "invalid": [],
                     "diverged": [], "failed": [], "pruned": [], "details": {},
                     "text": "r = 2: eval loss 1.021 against the best 1.015, within the 1% tolerance"}
    phase.save()
    member = phase.members.get(name=winner)
    Sweep.objects.filter(id=sweep.id).update(status=Sweep.Status.FINISHED, winner=member,
                                             verdict=f"{phase.title}: {phase.verdict['text']}")
    return member


def test_the_page_shows_phases_members_and_the_live_socket(world, member_client, sweep):
    response = member_client.get(f"/sweeps/{sweep.id}/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "Phase 1: Ranks at a constant alpha/r" in html
    assert "the smallest value whose eval loss is within the tolerance of the best (tolerance=0.01)" in html
    assert "max_steps=12" in html and "lora_alpha/r=2.0" in html  # held fixed
    assert "No verdict yet" in html
    members = list(sweep.members.order_by("index"))
    for m in members:
        assert f'data-member="{m.id}"' in html and f'href="/runs/{m.run_id}/"' in html
    assert html.count(">queued</span>") == 2
    assert f'href="/compare/?sweep={sweep.id}"' in html
    data = page_data(response)
    assert data["ws"] == f"/ws/sweeps/{sweep.id}/" and data["state"]["run_ids"] == [m.run_id for m in members]
    assert 'src="/static/js/sweep_detail.js"' in html and 'src="/static/vendor/plotly.min.js"' in html


def test_the_buttons_follow_the_status(world, member_client, sweep):
    html = member_client.get(f"/sweeps/{sweep.id}/").content.decode()
    assert '<form method="post" action="/sweeps/%d/stop/" id="stop-form">' % sweep.id in html
    assert 'id="resume-form" hidden' in html and 'id="confirm-form" hidden' in html and 'id="apply" hidden' in html
    Sweep.objects.filter(id=sweep.id).update(status=Sweep.Status.CONFIRMING)
    html = member_client.get(f"/sweeps/{sweep.id}/").content.decode()
    assert 'id="confirm-form" hidden' not in html
    decide(sweep)
    html = member_client.get(f"/sweeps/{sweep.id}/").content.decode()
    assert 'id="stop-form" hidden' in html and 'id="resume-form" hidden' in html
    assert 'id="apply" hidden' not in html and 'id="apply-preset-form"' not in html  # a member, not an admin


def test_a_lost_member_offers_resume(world, member_client, sweep):
    Run.objects.filter(id=sweep.members.first().run_id).update(status=Run.Status.LOST)
    html = member_client.get(f"/sweeps/{sweep.id}/").content.decode()
    assert 'id="resume-form" hidden' not in html and ">lost</span>" in html


def test_the_verdict_winner_and_evidence_show_once_decided(world, member_client, sweep):
    member = decide(sweep)
    other = sweep.members.exclude(id=member.id).get()
    SweepMember.objects.filter(id=other.id).update(outcome="diverged",
                                                   outcome_note="loss_not_finite at step 3: the loss is nan")
    html = member_client.get(f"/sweeps/{sweep.id}/").content.decode()
    assert "r = 2: eval loss 1.021 against the best 1.015, within the 1% tolerance" in html
    assert 'class="winner"' in html and 'id="sweep-winner-name">r=2<' in html
    assert ">diverged</span>" in html and "loss_not_finite at step 3: the loss is nan" in html
    assert ">Finished<" in html


def test_a_winner_at_the_top_of_its_ranks_is_said_and_offers_a_sweep_of_the_next_ones(world, member_client, sweep,
                                                                                        viewer_client):
    member = decide(sweep, winner="r=4")
    Run.objects.filter(id=member.run_id).update(status=Run.Status.SUCCEEDED, adapter_path="/var/adapters/r4")
    html = member_client.get(f"/sweeps/{sweep.id}/").content.decode()
    said = ("r = 4 won as the largest value swept (2, 4): the best may lie above it. Next: 8, 16, with r = 4 rerun "
            "beside them at the same budget.")
    assert said in html
    link = f"/sweeps/new/?template=r&amp;base_run={member.run_id}&amp;values=4%2C+8%2C+16"  # r's first phase
    assert f'href="{link}">Sweep these values</a>' in html
    beyond = page_data(member_client.get(f"/sweeps/{sweep.id}/"))["state"]["phases"][0]["beyond"]
    assert beyond["values"] == [4, 8, 16] and beyond["base_run"] == member.run_id  # what the page's script redraws
    assert member_client.get(f"/api/v1/sweeps/{sweep.id}/").json()["state"]["phases"][0]["beyond"]["text"] == said

    # The link opens the New sweep form on the same procedure and phase, built on the winner's run, the values filled.
    form = member_client.get(link.replace("&amp;", "&")).content.decode()
    assert 'name="values" value="4, 8, 16"' in form and f'<option value="{member.run_id}" selected>' in form

    # A viewer reads the note, without the button; the smallest rank winning is no edge for the rank rule.
    viewer_html = viewer_client.get(f"/sweeps/{sweep.id}/").content.decode()
    assert said in viewer_html and "Sweep these values" not in viewer_html
    sweep.phases.update(verdict={**sweep.phases.get().verdict, "winner": "r=2"})
    assert 'class="beyond"' not in member_client.get(f"/sweeps/{sweep.id}/").content.decode()


def test_another_teams_sweep_is_a_404_everywhere(world, sweep):
    outsider = client_for(world.outsider)
    for path in ("", "points/"):
        assert outsider.get(f"/sweeps/{sweep.id}/{path}").status_code == 404
    for action in ("stop", "resume", "confirm", "apply"):
        assert outsider.post(f"/sweeps/{sweep.id}/{action}/", {"action": "run"}).status_code == 404
    sweep.refresh_from_db()
    assert sweep.status == Sweep.Status.RUNNING and Run.objects.filter(team=world.team).count() == 3


def test_a_viewer_watches_but_cannot_stop_resume_confirm_or_apply(world, viewer_client, sweep):
    response = viewer_client.get(f"/sweeps/{sweep.id}/")
    assert response.status_code == 200
    assert 'id="stop-form"' not in response.content.decode()
    assert viewer_client.post(f"/sweeps/{sweep.id}/stop/").status_code == 403
    Sweep.objects.filter(id=sweep.id).update(status=Sweep.Status.CONFIRMING)
    assert viewer_client.post(f"/sweeps/{sweep.id}/confirm/").status_code == 403
    decide(sweep)
    assert viewer_client.post(f"/sweeps/{sweep.id}/apply/", {"action": "run"}).status_code == 403
    assert viewer_client.post(f"/sweeps/{sweep.id}/apply/", {"action": "preset", "name": "x"}).status_code == 403
    assert Run.objects.filter(team=world.team).count() == 3 and not Preset.objects.filter(team=world.team).exists()


def test_a_member_stops_the_sweep_and_its_queued_members(world, member_client, sweep):
    response = member_client.post(f"/sweeps/{sweep.id}/stop/", follow=True)
    assert "Sweep stopped" in response.content.decode()
    sweep.refresh_from_db()
    assert sweep.status == Sweep.Status.STOPPED
    assert set(Run.objects.filter(sweep=sweep).values_list("status", flat=True)) == {Run.Status.STOPPED}
    again = member_client.post(f"/sweeps/{sweep.id}/stop/", follow=True)
    assert "this sweep already stopped" in again.content.decode()


def test_confirm_when_not_waiting_says_why(world, member_client, sweep):
    response = member_client.post(f"/sweeps/{sweep.id}/confirm/", follow=True)
    assert "not waiting for confirmation" in response.content.decode()


def test_actions_are_posts(world, member_client, sweep):
    for action in ("stop", "resume", "confirm", "apply"):
        assert member_client.get(f"/sweeps/{sweep.id}/{action}/").status_code == 405


def test_apply_before_a_winner_says_so_and_creates_nothing(world, member_client, sweep):
    response = member_client.post(f"/sweeps/{sweep.id}/apply/", {"action": "run"}, follow=True)
    assert "this sweep has no winner yet" in response.content.decode()
    assert Run.objects.filter(team=world.team).count() == 3


def test_apply_the_winner_as_a_longer_run(world, member_client, sweep):
    member = decide(sweep)
    bad = member_client.post(f"/sweeps/{sweep.id}/apply/", {"action": "run", "max_steps": "lots"}, follow=True)
    assert "max_steps: &#x27;lots&#x27; is not a step count" in bad.content.decode()
    assert Run.objects.filter(team=world.team).count() == 3
    response = member_client.post(f"/sweeps/{sweep.id}/apply/", {"action": "run", "max_steps": "40"})
    run = Run.objects.filter(team=world.team).latest("id")
    assert response.status_code == 302 and response["Location"] == f"/runs/{run.id}/"
    assert run.config["max_steps"] == 40 and run.config["r"] == member.config["r"] == 2


def test_saving_the_winner_as_a_preset_needs_the_admin_role(world, member_client, sweep):
    decide(sweep)
    assert member_client.post(f"/sweeps/{sweep.id}/apply/", {"action": "preset", "name": "r2"}).status_code == 403
    admin = make_member(world.team, role=Membership.Role.ADMIN)
    client = client_for(admin)
    assert 'id="apply-preset-form"' in client.get(f"/sweeps/{sweep.id}/").content.decode()
    empty = client.post(f"/sweeps/{sweep.id}/apply/", {"action": "preset", "name": " "}, follow=True)
    assert "give the preset a name" in empty.content.decode()
    response = client.post(f"/sweeps/{sweep.id}/apply/", {"action": "preset", "name": "rank 2"}, follow=True)
    assert "Saved the winner as the team preset" in response.content.decode()
    preset = Preset.objects.get(team=world.team, name="rank 2")
    assert preset.config["r"] == 2
    unknown = client.post(f"/sweeps/{sweep.id}/apply/", {"action": "merge"}, follow=True)
    assert "unknown action" in unknown.content.decode()


def test_the_points_start_each_members_chart(world, member_client, sweep):
    first, second = sweep.members.order_by("index")
    now = timezone.now()
    MetricPoint.objects.bulk_create([MetricPoint(run_id=first.run_id, step=s, loss=3.0 - s / 10, time=now)
                                     for s in range(1, 7)])
    MetricPoint.objects.filter(run_id=first.run_id, step=6).update(eval_loss=2.5)
    answer = member_client.get(f"/sweeps/{sweep.id}/points/").json()["runs"]
    assert answer[str(first.run_id)]["loss"][0] == [1, 2.9] and len(answer[str(first.run_id)]["loss"]) == 6
    assert answer[str(first.run_id)]["eval_loss"] == [[6, 2.5]]
    assert answer[str(second.run_id)] == {"loss": [], "eval_loss": []}
    only = member_client.get(f"/sweeps/{sweep.id}/points/?runs={second.run_id},{world.run.id}").json()["runs"]
    assert list(only) == [str(second.run_id)]  # a run that is not a member is left out


def test_logged_out_is_sent_to_log_in(client, sweep):
    assert client.get(f"/sweeps/{sweep.id}/")["Location"].startswith("/accounts/login/")
