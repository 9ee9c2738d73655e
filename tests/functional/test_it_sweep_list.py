"""The sweep list: the team's sweeps with procedure, status, phase count, winner and creation time; another team's
are not listed; the nav and the pages that start sweeps link to the form."""
import pytest

from tests.factories import idle_queue, tiny_overrides
from tests.functional.conftest import client_for
from training.models import Run, Sweep
from training.sweeps import services

pytestmark = pytest.mark.django_db


def make_sweep(team, user, dataset, name: str) -> Sweep:
    return services.sweep_create(team=team, user=user, template="r", dataset=dataset, queue=idle_queue(), name=name,
                                 params={"values": [2, 4]},
                                 overrides=tiny_overrides("tiny-model", max_steps=12, eval_split=0.2, eval_steps=6))


def test_the_list_shows_the_teams_sweeps_only(world, member_client):
    mine = make_sweep(world.team, world.member, world.dataset, "alpha ranks")
    theirs = make_sweep(world.other_team, world.outsider, world.other_dataset, "beta ranks")
    winner = mine.members.get(name="r=4")
    Sweep.objects.filter(id=mine.id).update(status=Sweep.Status.FINISHED, winner=winner)
    response = member_client.get("/sweeps/")
    assert response.status_code == 200
    html = response.content.decode()
    assert f'href="/sweeps/{mine.id}/"' in html and "alpha ranks" in html
    assert "beta ranks" not in html and f"/sweeps/{theirs.id}/" not in html
    row = html[html.index(f'data-sweep="{mine.id}"'):]
    row = row[:row.index("</tr>")]
    assert ">Finished<" in row and "<td>1</td>" in row and "<strong>r=4</strong>" in row
    assert 'href="/guidance/r/"' in row
    assert 'href="/sweeps/new/"' in html


def test_empty_list_and_the_nav_link(world, member_client):
    html = member_client.get("/sweeps/").content.decode()
    assert "No sweeps yet" in html and 'href="/sweeps/" aria-current="page">Sweeps</a>' in html


def test_a_viewer_sees_the_list_but_no_new_sweep_button(world, viewer_client):
    make_sweep(world.team, world.member, world.dataset, "alpha ranks")
    html = viewer_client.get("/sweeps/").content.decode()
    assert "alpha ranks" in html and 'class="button primary" href="/sweeps/new/"' not in html


def test_the_guidance_page_runs_its_procedure(world, member_client):
    html = member_client.get("/guidance/r/").content.decode()
    assert 'href="/sweeps/new/?template=r">Run this procedure</a>' in html
    assert "Run this procedure" not in member_client.get("/guidance/dtype/").content.decode()  # no template for it


def test_a_succeeded_run_and_compare_link_to_a_sweep_from_it(world, member_client):
    Run.objects.filter(id=world.run.id).update(status=Run.Status.SUCCEEDED, adapter_path="/a")
    other = client_for(world.member)
    assert f'href="/sweeps/new/?base_run={world.run.id}">Sweep from this run</a>' in other.get(
        f"/runs/{world.run.id}/").content.decode()
    sweep = make_sweep(world.team, world.member, world.dataset, "alpha ranks")
    html = member_client.get(f"/compare/?sweep={sweep.id}").content.decode()
    assert f'id="back-to-sweep" href="/sweeps/{sweep.id}/"' in html
    html = member_client.get(f"/compare/?runs={world.run.id},{sweep.members.first().run_id}").content.decode()
    assert f'href="/sweeps/new/?base_run={world.run.id}"' in html and "back-to-sweep" not in html
