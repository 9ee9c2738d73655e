"""Team scoping: another team's run, dataset, preset and websocket look exactly like missing ones; anonymous
sockets are refused; a viewer can watch but not start or stop runs."""
import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404

from dashboard.models import Membership
from tests.factories import make_dataset, make_member, make_preset, make_run, make_team, make_user
from tests.integration.conftest import communicator, run_async, session_cookie
from training import access, selectors
from training.live.consumers import CLOSE_NOT_FOUND, CLOSE_UNAUTHENTICATED
from training.models import Run
from training.runs import services

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def two_teams(tmp_path):
    team_a, team_b = make_team(), make_team()
    alice = make_member(team_a)
    bob = make_member(team_b)
    dataset_b = make_dataset(team_b, bob, tmp_dir=tmp_path)
    run_b = make_run(team_b, bob, dataset_b)
    return team_a, alice, team_b, bob, dataset_b, run_b


@pytest.mark.django_db
def test_another_teams_objects_are_404_like_missing_ones(two_teams):
    team_a, alice, team_b, bob, dataset_b, run_b = two_teams
    preset_b = make_preset(team_b, r=8)
    global_preset = make_preset(None, r=32)
    with pytest.raises(Http404):
        access.get_run_for_user(alice, run_b.id)
    with pytest.raises(Http404):
        access.get_run_for_user(alice, 10**9)
    with pytest.raises(Http404):
        access.get_dataset_for_user(alice, dataset_b.id)
    with pytest.raises(Http404):
        access.get_preset_for_user(alice, preset_b.id)
    with pytest.raises(Http404):
        access.get_team_for_user(alice, team_b.slug)
    assert access.get_preset_for_user(alice, global_preset.id) == global_preset
    assert list(selectors.run_list_for(alice)) == []
    assert list(access.dataset_list_for(alice)) == []
    assert set(access.preset_list_for(alice)) == {global_preset}
    assert access.get_run_for_user(bob, run_b.id) == run_b
    assert list(selectors.run_list_for(bob)) == [run_b]


@pytest.mark.django_db
def test_services_refuse_another_teams_dataset_and_preset(two_teams, tmp_path):
    team_a, alice, team_b, bob, dataset_b, run_b = two_teams
    with pytest.raises(ValidationError) as excinfo:
        services.run_create(team=team_a, user=alice, dataset=dataset_b, overrides={"model": "m"})
    assert "dataset" in excinfo.value.message_dict
    dataset_a = make_dataset(team_a, alice, tmp_dir=tmp_path)
    with pytest.raises(ValidationError) as excinfo:
        services.run_create(team=team_a, user=alice, dataset=dataset_a, preset=make_preset(team_b),
                            overrides={"model": "m"})
    assert "preset" in excinfo.value.message_dict
    with pytest.raises(PermissionDenied):
        services.run_stop(run=run_b, user=alice)
    assert Run.objects.count() == 1


@pytest.mark.django_db
def test_a_viewer_can_watch_but_not_start_or_stop_runs(two_teams):
    team_a, alice, team_b, bob, dataset_b, run_b = two_teams
    viewer = make_member(team_b, role=Membership.Role.VIEWER)
    assert access.get_run_for_user(viewer, run_b.id) == run_b
    with pytest.raises(PermissionDenied, match="member"):
        services.run_create(team=team_b, user=viewer, dataset=dataset_b, overrides={"model": "m"})
    with pytest.raises(PermissionDenied):
        services.run_stop(run=run_b, user=viewer)
    with pytest.raises(PermissionDenied):
        services.run_resume(run=run_b, user=viewer)
    run_b.refresh_from_db()
    assert run_b.status == Run.Status.QUEUED and Run.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_the_run_websocket_admits_only_the_runs_team(two_teams):
    team_a, alice, team_b, bob, dataset_b, run_b = two_teams
    alice_cookie, bob_cookie = session_cookie(alice), session_cookie(bob)

    async def connect(run_id, cookie):
        comm = communicator(run_id, cookie)
        connected, code = await comm.connect(timeout=10)
        if connected:
            await comm.disconnect()
        return connected, code

    assert run_async(connect, run_b.id, None) == (False, CLOSE_UNAUTHENTICATED)
    assert run_async(connect, run_b.id, alice_cookie) == (False, CLOSE_NOT_FOUND)
    assert run_async(connect, 10**9, alice_cookie) == (False, CLOSE_NOT_FOUND)
    assert run_async(connect, run_b.id, bob_cookie)[0] is True
    stranger = make_user()
    assert run_async(connect, run_b.id, session_cookie(stranger)) == (False, CLOSE_NOT_FOUND)


@pytest.mark.django_db(transaction=True)
def test_bad_websocket_messages_get_an_error_naming_what_is_allowed(two_teams):
    team_a, alice, team_b, bob, dataset_b, run_b = two_teams
    cookie = session_cookie(bob)

    async def talk():
        comm = communicator(run_b.id, cookie)
        assert (await comm.connect(timeout=10))[0]
        answers = []
        for frame in ["not json", '{"type": "subscribe"}', "[1, 2]", '{"type": "replay"}',
                      '{"type": "replay", "after_step": -1}', '{"type": "replay", "after_step": "5"}',
                      '{"type": "replay", "after_step": 0, "after_seq": true}']:
            await comm.send_to(text_data=frame)
            answers.append(await comm.receive_json_from(timeout=5))
        await comm.send_to(bytes_data=b"\x00")
        answers.append(await comm.receive_json_from(timeout=5))
        await comm.send_json_to({"type": "replay", "after_step": 0})
        replay = await comm.receive_json_from(timeout=5)
        await comm.disconnect()
        return answers, replay

    answers, replay = run_async(talk)
    assert all(a["type"] == "error" and a["allowed"][0]["type"] == "replay" for a in answers)
    errors = [a["error"] for a in answers]
    assert "not JSON" in errors[0] and "'subscribe'" in errors[1] and "after_step is required" in errors[3]
    assert "after_step must be an integer >= 0" in errors[4] and "after_seq" in errors[6]
    assert "text frames" in errors[7]
    # The socket survived all of it.
    assert replay["type"] == "replay" and replay["done"] and replay["status"]["status"] == "queued"
    assert replay["status"]["queue_position"] == 1 and replay["points"] == []
