"""An open websocket follows its user's access: a member removed from the team, deactivated or deleted has the
run page's and the run list's sockets closed within a few seconds and gets nothing sent after; a member of two
teams removed from one keeps the other's run page, and the run list reconnects to the team left. A change Django
signals is pushed (the sockets close at once with the periodic re-check far off); one it does not (a queryset's
update()) is caught by the periodic re-check."""
import time

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User

from dashboard.models import Membership
from tests.factories import make_dataset, make_member, make_run, make_team
from tests.integration.conftest import communicator, run_async, session_cookie
from training.live import send as live
from training.live.consumers import CLOSE_NOT_FOUND, CLOSE_TEAMS_CHANGED

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

RECHECK_S = 0.5
STATUS = {"status": "running", "is_terminal": False}


@pytest.fixture(autouse=True)
def quick_recheck(settings):
    settings.TUNEBOARD_WS_ACCESS_RECHECK_S = RECHECK_S


async def open_run_page(run_id, cookie):
    comm = communicator(run_id, cookie)
    assert (await comm.connect(timeout=10))[0]
    await comm.send_json_to({"type": "replay", "after_step": 0})
    assert (await comm.receive_json_from(timeout=10))["done"]
    return comm


async def open_run_list(run_ids, cookie):
    comm = communicator(None, cookie)
    assert (await comm.connect(timeout=10))[0]
    await comm.send_json_to({"type": "watch", "runs": run_ids})
    assert (await comm.receive_json_from(timeout=10))["type"] == "rows"
    return comm


async def closed_code(comm, timeout):
    output = await comm.receive_output(timeout=timeout)
    assert output["type"] == "websocket.close", output
    return output["code"]


def remove(user, team):
    Membership.objects.filter(user=user, team=team).delete()


def deactivate(user, team):
    User.objects.filter(id=user.id).update(is_active=False)


def delete(user, team):
    User.objects.filter(id=user.id).delete()


def delete_instance(user, team):
    User.objects.get(id=user.id).delete()


def deactivate_and_save(user, team):
    user = User.objects.get(id=user.id)
    user.is_active = False
    user.save()


def move_to_another_team(user, team):
    membership = Membership.objects.get(user=user, team=team)
    membership.team = make_team()
    membership.save()


@pytest.mark.parametrize("lose_access", [remove, deactivate, delete])
def test_losing_access_closes_the_run_page_and_the_run_list_within_seconds(tmp_path, lose_access):
    team = make_team()
    user, colleague = make_member(team), make_member(team)
    run = make_run(team, colleague, make_dataset(team, colleague, tmp_dir=tmp_path))
    cookie = session_cookie(user)

    async def watch():
        page, rows = await open_run_page(run.id, cookie), await open_run_list([run.id], cookie)
        # Both are live before: a status reaches the page and a row the list.
        await sync_to_async(live.send_run_message)(run.id, "status", STATUS)
        await sync_to_async(live.send_run_row)(run)
        before = await page.receive_json_from(timeout=10), await rows.receive_json_from(timeout=10)
        started = time.monotonic()
        await sync_to_async(lose_access)(user, team)
        codes = await closed_code(page, timeout=10), await closed_code(rows, timeout=10)
        took = time.monotonic() - started
        await sync_to_async(live.send_run_message)(run.id, "status", STATUS)
        await sync_to_async(live.send_run_row)(run)
        after = await page.receive_nothing(timeout=1), await rows.receive_nothing(timeout=1)
        await page.disconnect()
        await rows.disconnect()
        return before, codes, took, after

    before, codes, took, after = run_async(watch)
    assert before[0] == {"type": "status", **STATUS} and before[1]["row"]["id"] == run.id
    assert codes == (CLOSE_NOT_FOUND, CLOSE_TEAMS_CHANGED)
    assert took < 2 * RECHECK_S + 1
    assert after == (True, True)


def test_a_member_removed_from_one_of_two_teams_keeps_the_other(tmp_path):
    team, other = make_team(), make_team()
    user, colleague = make_member(team), make_member(team)
    make_member(other, user=user)
    left_run = make_run(team, colleague, make_dataset(team, colleague, tmp_dir=tmp_path / "a"))
    kept_run = make_run(other, user, make_dataset(other, user, tmp_dir=tmp_path / "b"))
    cookie = session_cookie(user)

    async def watch():
        left_page, kept_page = await open_run_page(left_run.id, cookie), await open_run_page(kept_run.id, cookie)
        rows = await open_run_list([left_run.id, kept_run.id], cookie)
        await sync_to_async(remove)(user, team)
        left_code, list_code = await closed_code(left_page, timeout=10), await closed_code(rows, timeout=10)
        # The other team's page stays open well past a re-check, and still gets its run's messages.
        kept_quiet = await kept_page.receive_nothing(timeout=3 * RECHECK_S)
        await sync_to_async(live.send_run_message)(kept_run.id, "status", STATUS)
        kept_message = await kept_page.receive_json_from(timeout=10)
        # The run list's page reconnects: the new socket has the kept team's rows only.
        again = communicator(None, cookie)
        assert (await again.connect(timeout=10))[0]
        await again.send_json_to({"type": "watch", "runs": [left_run.id, kept_run.id]})
        answered = await again.receive_json_from(timeout=10)
        await sync_to_async(live.send_run_row)(left_run)
        await sync_to_async(live.send_run_row)(kept_run)
        row = await again.receive_json_from(timeout=10)
        nothing_more = await again.receive_nothing(timeout=1)
        for comm in (left_page, kept_page, rows, again):
            await comm.disconnect()
        return left_code, list_code, kept_quiet, kept_message, answered, row, nothing_more

    left_code, list_code, kept_quiet, kept_message, answered, row, nothing_more = run_async(watch)
    assert (left_code, list_code) == (CLOSE_NOT_FOUND, CLOSE_TEAMS_CHANGED)
    assert kept_quiet and kept_message == {"type": "status", **STATUS}
    assert [r["id"] for r in answered["rows"]] == [kept_run.id]
    assert row["row"]["id"] == kept_run.id and nothing_more


async def close_code_within(comm, deadline):
    """The socket's close code if it closes before deadline (time.monotonic()), else None (and it stays usable)."""
    if await comm.receive_nothing(timeout=max(0.0, deadline - time.monotonic()), interval=0.02):
        return None
    return await closed_code(comm, timeout=1)


def open_both_then(lose_access, tmp_path, *, wait_s):
    """The user's run page and run list open and live; lose_access(user, team); each socket's close code within
    wait_s of the change (None if still open: then it must still get its messages) and the seconds to the last
    close."""
    team = make_team()
    user, colleague = make_member(team), make_member(team)
    run = make_run(team, colleague, make_dataset(team, colleague, tmp_dir=tmp_path))
    cookie = session_cookie(user)

    async def watch():
        page, rows = await open_run_page(run.id, cookie), await open_run_list([run.id], cookie)
        await sync_to_async(live.send_run_message)(run.id, "status", STATUS)
        assert await page.receive_json_from(timeout=10) == {"type": "status", **STATUS}
        started = time.monotonic()
        await sync_to_async(lose_access)(user, team)
        codes = (await close_code_within(page, started + wait_s), await close_code_within(rows, started + wait_s))
        took = time.monotonic() - started
        if codes == (None, None):
            await sync_to_async(live.send_run_message)(run.id, "status", STATUS)
            await sync_to_async(live.send_run_row)(run)
            assert await page.receive_json_from(timeout=10) == {"type": "status", **STATUS}
            assert (await rows.receive_json_from(timeout=10))["row"]["id"] == run.id
        await page.disconnect()
        await rows.disconnect()
        return codes, took

    return run_async(watch)


@pytest.mark.parametrize("lose_access", [remove, delete, delete_instance, deactivate_and_save, move_to_another_team])
def test_a_signalled_change_is_pushed_with_the_periodic_recheck_far_off(tmp_path, settings, lose_access):
    settings.TUNEBOARD_WS_ACCESS_RECHECK_S = 600
    codes, took = open_both_then(lose_access, tmp_path, wait_s=5)
    assert codes == (CLOSE_NOT_FOUND, CLOSE_TEAMS_CHANGED)
    assert took < 2


def test_a_change_no_signal_announces_waits_for_the_periodic_recheck(tmp_path, settings):
    settings.TUNEBOARD_WS_ACCESS_RECHECK_S = 600
    assert open_both_then(deactivate, tmp_path, wait_s=2)[0] == (None, None)  # nothing pushed: both still open


def test_the_periodic_recheck_catches_a_queryset_update_of_is_active(tmp_path, settings):
    settings.TUNEBOARD_WS_ACCESS_RECHECK_S = RECHECK_S
    codes, took = open_both_then(deactivate, tmp_path, wait_s=5)
    assert codes == (CLOSE_NOT_FOUND, CLOSE_TEAMS_CHANGED)
    assert took < RECHECK_S + 1.5


def test_a_role_change_rechecks_and_keeps_the_sockets_open(tmp_path, settings):
    """The push re-checks: access kept, the sockets stay."""
    settings.TUNEBOARD_WS_ACCESS_RECHECK_S = 600

    def promote(user, team):
        membership = Membership.objects.get(user=user, team=team)
        membership.role = Membership.Role.ADMIN
        membership.save()

    assert open_both_then(promote, tmp_path, wait_s=2)[0] == (None, None)
