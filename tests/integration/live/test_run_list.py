"""The run list's websocket on the real Redis: a member gets the rows of their teams' runs as they change, never
another team's; `watch` answers the page's rows as they are now; bad requests get an error naming what is allowed."""
import pytest
from channels.db import database_sync_to_async

from tests.factories import make_dataset, make_member, make_run, make_team
from tests.integration.conftest import communicator, run_async, session_cookie
from training.models import Run
from training.runs import services

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


def test_rows_of_the_users_teams_arrive_as_runs_change_and_no_other_teams(tmp_path):
    team, other = make_team(), make_team()
    user, stranger = make_member(team), make_member(other)
    mine = make_run(team, user, make_dataset(team, user, tmp_dir=tmp_path / "a"))
    theirs = make_run(other, stranger, make_dataset(other, stranger, tmp_dir=tmp_path / "b"))
    cookie = session_cookie(user)

    async def watch():
        comm = communicator(None, cookie)
        assert (await comm.connect(timeout=10))[0]
        await comm.send_json_to({"type": "watch", "runs": [mine.id, theirs.id]})
        rows = await comm.receive_json_from(timeout=10)
        # The other team's run stops first: its row must not reach this user; then this team's run stops.
        await database_sync_to_async(services.run_stop)(run=theirs, user=stranger)
        await database_sync_to_async(services.run_stop)(run=mine, user=user)
        row = await comm.receive_json_from(timeout=10)
        nothing_more = await comm.receive_nothing(timeout=1)
        await comm.disconnect()
        return rows, row, nothing_more

    rows, row, nothing_more = run_async(watch)
    assert rows["type"] == "rows" and [r["id"] for r in rows["rows"]] == [mine.id]
    assert rows["rows"][0] == {"id": mine.id, "status": "queued", "status_display": "Queued", "is_terminal": False,
                               "last_step": 0, "total_steps": mine.total_steps, "progress": 0.0,
                               "queue": mine.queue, "queue_position": 1, "finding_count": 0,
                               "held_reason": ""}
    assert row["type"] == "row" and row["row"]["id"] == mine.id
    assert row["row"]["status"] == Run.Status.STOPPED and row["row"]["queue_position"] is None
    assert nothing_more


def test_anonymous_is_refused_and_a_bad_watch_names_what_is_allowed(tmp_path):
    team = make_team()
    user = make_member(team)
    cookie = session_cookie(user)

    async def talk():
        anonymous = communicator(None, None)
        connected, code = await anonymous.connect(timeout=10)
        comm = communicator(None, cookie)
        assert (await comm.connect(timeout=10))[0]
        answers = []
        for bad in ({"type": "watch", "runs": "all"}, {"type": "watch", "runs": [1, True]},
                    {"type": "watch", "runs": list(range(1, 202))}, {"type": "replay"}):
            await comm.send_json_to(bad)
            answers.append(await comm.receive_json_from(timeout=10))
        await comm.send_to(text_data="{not json")
        answers.append(await comm.receive_json_from(timeout=10))
        await comm.disconnect()
        return connected, code, answers

    connected, code, answers = run_async(talk)
    assert (connected, code) == (False, 4401)
    assert all(a["type"] == "error" and a["allowed"][0]["type"] == "watch" for a in answers)
    assert [a["error"].split(",")[0][:40] for a in answers[:3]] == ["runs must be a list of at most 200 run i"] * 3
    assert answers[3]["error"] == "unknown message 'replay'" and answers[4]["error"].startswith("not JSON")
