"""Two real ranks of the engine (gloo on this CPU): a rank killed mid-run fails the run, naming that rank, and the
other rank does not outlive it."""
import json
import os
import signal
import subprocess
import sys

import pytest

from .conftest import ROOT, base_config

pytestmark = pytest.mark.slow


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_rank_killed_mid_run_fails_the_run_naming_it_and_leaves_no_process(tiny_llama, data_dir, tmp_path):
    config = base_config(tiny_llama, data_dir, tmp_path / "out", max_steps=5000, per_device_train_batch_size=4,
                         devices=2)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    proc = subprocess.Popen([sys.executable, "-m", "training.engine", "run", str(path)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    events, ranks = [], None
    for line in proc.stdout:
        event = json.loads(line)
        events.append(event)
        if event["type"] == "started":
            ranks = event["ranks"]
            assert event["derived"]["effective_batch"] == 8 and event["derived"]["devices"] == 2
        if event["type"] == "metrics" and event["step"] == 3:
            os.kill(ranks[1]["pid"], signal.SIGKILL)
    code = proc.wait(timeout=60)
    assert code == 1
    failed = events[-1]
    assert failed["type"] == "failed" and failed["error_class"] == "ProcessDied" and failed["rank"] == 1
    assert failed["message"] == "rank 1 of 2 was killed by SIGKILL without reporting a result"
    assert [e["type"] for e in events].count("failed") == 1
    assert not alive(ranks[0]["pid"]) and not alive(ranks[1]["pid"])
