"""A Gemma 2 run on Unsloth never goes to a warm process (issue 33): Unsloth's compile must be off before unsloth is
imported (training/engine/backends.compile_lever), and a warm process imported it already."""
import json
import sys

from training.models import Run
from training.runs import warm
from training.runs.process import TrainingProcess


def test_a_gemma2_unsloth_run_starts_cold_and_other_runs_warm(monkeypatch, tmp_path):
    monkeypatch.setattr(warm, "enabled", lambda: True)
    asked = []
    monkeypatch.setattr(warm.pool, "start_run", lambda **kwargs: asked.append(kwargs) or "warm")
    models = {}
    for model_type in ("gemma2", "gemma3_text"):
        (tmp_path / model_type).mkdir()
        (tmp_path / model_type / "config.json").write_text(json.dumps({"model_type": model_type}))
        models[model_type] = str(tmp_path / model_type)
    args = [sys.executable, "-c", "pass"]

    def start(model, backend):
        return warm.start(run=Run(config={"model": model, "backend": backend}), args=args, cwd=tmp_path,
                          stop_file=tmp_path / "STOP", config_path=tmp_path / "config.json")

    cold = start(models["gemma2"], "unsloth")
    assert isinstance(cold, TrainingProcess) and not asked
    assert cold.wait() == 0
    assert start(models["gemma3_text"], "unsloth") == "warm" and start(models["gemma2"], "hf") == "warm"
    assert len(asked) == 2
