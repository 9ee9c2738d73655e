"""A run on several GPUs is never handed to a warm process (issue 23): its ranks are launched by the engine's run
command, which a warm process, one trainer in one process, cannot be."""
import sys

from training.models import Run
from training.runs import warm
from training.runs.process import TrainingProcess


def test_a_multi_gpu_run_gets_a_process_of_its_own_when_warm_workers_are_on(monkeypatch, tmp_path):
    monkeypatch.setattr(warm, "enabled", lambda: True)
    asked = []
    monkeypatch.setattr(warm.pool, "start_run", lambda **kwargs: asked.append(kwargs) or "warm")
    args = [sys.executable, "-c", "pass"]
    one = warm.start(run=Run(config={"devices": 1}), args=args, cwd=tmp_path, stop_file=tmp_path / "STOP",
                     config_path=tmp_path / "config.json")
    assert one == "warm" and len(asked) == 1
    several = warm.start(run=Run(config={"devices": 2}), args=args, cwd=tmp_path, stop_file=tmp_path / "STOP",
                         config_path=tmp_path / "config.json")
    assert isinstance(several, TrainingProcess) and len(asked) == 1
    assert several.wait() == 0
