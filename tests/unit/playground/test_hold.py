"""When a playground chat gives its worker up: its idle time after it was last used, and, while runs wait for it, the
longest hold counted from when they began to wait, whichever comes first."""
from training.playground.hold import held_until


def test_without_runs_waiting_only_the_idle_time_counts():
    assert held_until(last_active=1000.0, idle_s=300.0, held_since=None, max_s=60.0) == 1300.0


def test_with_runs_waiting_the_hold_ends_at_the_cap_however_active_the_chat():
    assert held_until(last_active=1000.0, idle_s=300.0, held_since=900.0, max_s=60.0) == 960.0
    assert held_until(last_active=5000.0, idle_s=300.0, held_since=900.0, max_s=60.0) == 960.0


def test_an_idle_chat_ends_before_the_cap_when_that_comes_first():
    assert held_until(last_active=1000.0, idle_s=30.0, held_since=990.0, max_s=1800.0) == 1030.0
