"""Which idle warm process a run gets, and which are killed before it runs: pure choice over the pool's records."""
from training.runs.warm import WarmPool, WarmProcess, choose


def idle(team_id=None, backend="auto", base=None, idle_since=0.0):
    return WarmProcess(process=None, backend=backend, team_id=team_id, base=base, idle_since=idle_since)


def test_the_same_teams_process_with_the_same_base_comes_first_then_the_teams_then_a_fresh_one():
    fresh, other_base, same_base = idle(), idle(team_id=1, base="b2", idle_since=5), idle(team_id=1, base="b1")
    pool = [fresh, other_base, same_base]
    assert choose(pool, team_id=1, backend="auto", base="b1") == (same_base, [])
    assert choose([fresh, other_base], team_id=1, backend="auto", base="b1") == (other_base, [])
    assert choose([fresh], team_id=1, backend="auto", base="b1") == (fresh, [])
    assert choose([], team_id=1, backend="auto", base="b1") == (None, [])


def test_another_teams_process_is_never_given_and_always_killed_first():
    theirs, theirs_hf, fresh = idle(team_id=2, base="b1"), idle(team_id=2, backend="hf"), idle()
    assert choose([theirs, theirs_hf, fresh], team_id=1, backend="auto", base="b1") == (fresh, [theirs, theirs_hf])
    assert choose([theirs], team_id=1, backend="auto", base="b1") == (None, [theirs])


def test_only_a_process_of_the_runs_backend_qualifies():
    unsloth, hf = idle(team_id=1, backend="unsloth", base="b1"), idle(backend="hf")
    assert choose([unsloth, hf], team_id=1, backend="hf", base="b1") == (hf, [])
    assert choose([unsloth], team_id=1, backend="auto", base="b1") == (None, [])


def test_a_run_that_keeps_no_base_still_takes_its_teams_process():
    mine = idle(team_id=1, base="b1")
    assert choose([idle(), mine], team_id=1, backend="auto", base=None) == (mine, [])


class FakeProcess:
    """Stands for a warm child: alive until killed."""

    def __init__(self, pid):
        self.pid, self.killed = pid, False

    def poll(self):
        return -9 if self.killed else None

    def kill(self):
        self.killed = True

    def wait(self, timeout=None):
        return -9


def served(pid, team_id, idle_since=0.0):
    return WarmProcess(process=FakeProcess(pid), backend="auto", team_id=team_id, base="b", idle_since=idle_since)


def test_an_idle_process_is_ended_after_the_idle_timeout(settings):
    settings.TUNEBOARD_WARM_IDLE_S = 60.0
    pool = WarmPool()
    pool.put_back(served(1, team_id=1), base="b")
    kept = pool.idle()[0]
    pool.reap_expired(now=kept.idle_since + 59)
    assert pool.idle() == [kept] and not kept.process.killed
    pool.reap_expired(now=kept.idle_since + 61)
    assert pool.idle() == [] and kept.process.killed
    pool.close()


def test_at_most_max_idle_served_processes_are_kept_the_newest(settings):
    settings.TUNEBOARD_WARM_MAX_IDLE = 1
    pool = WarmPool()
    older, newer = served(1, team_id=1), served(2, team_id=1)
    pool.put_back(older, base="b")
    pool.put_back(newer, base="b")
    assert pool.idle() == [newer] and older.process.killed
    pool.close()
    assert newer.process.killed  # and the worker's shutdown ends the rest


def test_releasing_models_keeps_a_team_when_asked_and_never_the_fresh_spare():
    pool = WarmPool()
    mine, theirs, fresh = served(1, team_id=1), served(2, team_id=2), served(3, team_id=None)
    pool._idle = [mine, theirs, fresh]
    pool.release_models("a run of team 1 is starting", keep_team=1)
    assert pool.idle() == [mine, fresh] and theirs.process.killed
    pool.release_models("an evaluation")
    assert pool.idle() == [fresh] and mine.process.killed and not fresh.process.killed


def spawning_pool(monkeypatch):
    """A pool whose new processes are fakes (pid 100, 101, ...)."""
    pool, pids = WarmPool(), iter(range(100, 200))
    monkeypatch.setattr(pool, "_spawn", lambda backend: WarmProcess(process=FakeProcess(next(pids)), backend=backend))
    monkeypatch.setattr(pool, "_start_reaper", lambda: None)
    return pool


def fresh_pids(pool):
    return sorted(w.pid for w in pool.idle() if w.team_id is None)


def test_a_ready_worker_has_a_spare_for_each_slot_and_keeps_one_for_each_free_slot(monkeypatch):
    pool = spawning_pool(monkeypatch)
    pool.prestart(4)
    assert fresh_pids(pool) == [100, 101, 102, 103]
    # Four runs take the four spares at once (a sweep's members): one spare imports beside them, not four.
    pool._idle, pool._busy = [], 4
    pool._keep_spare("auto")
    assert fresh_pids(pool) == [104]
    pool.run_ended("auto")  # three train, one slot is free: still the one spare
    assert fresh_pids(pool) == [104]
    for _ in range(3):
        pool.run_ended("auto")
    assert fresh_pids(pool) == [104, 105, 106, 107]
    pool.run_ended("auto")  # an end reported twice never counts a slot below zero
    assert pool._busy == 0 and len(fresh_pids(pool)) == 4


def test_a_spare_is_not_ended_for_being_idle_but_a_dead_one_is(settings, monkeypatch):
    settings.TUNEBOARD_WARM_IDLE_S = 60.0
    pool = spawning_pool(monkeypatch)
    pool.prestart(2)
    spare, dead = pool.idle()
    dead.process.kill()
    pool.reap_expired(now=spare.idle_since + 3600)
    assert pool.idle() == [spare] and not spare.process.killed
