"""The warm command on the tiny model (CPU): one process trains request after request, each with the losses of the
same config run cold, keeping the base model when it may; a stopped or failed request ends the process."""
import json
import os
import subprocess
import sys
import time

import pytest

from .conftest import ROOT, base_config, of_type, run_cli

pytestmark = pytest.mark.slow


class Warm:
    """A `python -m training.engine warm` process driven as the worker drives it."""

    def __init__(self, tmp_path, backend="hf"):
        self.tmp_path, self.err = tmp_path, tmp_path / f"warm-{backend}.err"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "training.engine", "warm", "--backend", backend], cwd=ROOT, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self.err.open("w"), text=True, bufsize=1,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
        self.ready = [self.next_event()]
        assert self.ready[0]["type"] == "warm-ready", self.ready
        self.count = 0

    def next_event(self) -> dict:
        line = self.proc.stdout.readline()
        assert line, f"the warm process ended (code {self.proc.wait()}): {self.err.read_text()[-3000:]}"
        return json.loads(line)

    def train(self, config: dict, **request) -> list[dict]:
        """The request's events up to its terminal one, then the ready event after it (if any) in self.ready."""
        self.count += 1
        path = self.tmp_path / f"request-{self.count}.json"
        path.write_text(json.dumps(config))
        self.proc.stdin.write(json.dumps({"config": str(path), "sent": time.time(), **request}) + "\n")
        self.proc.stdin.flush()
        events = []
        while not events or events[-1]["type"] not in ("finished", "stopped", "failed"):
            events.append(self.next_event())
        if events[-1]["type"] == "finished":
            self.ready.append(self.next_event())
            assert self.ready[-1]["type"] == "warm-ready", self.ready[-1]
        return events

    def close(self) -> int:
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        return self.proc.wait(timeout=60)


def losses(events):
    return [(m["step"], m["loss"], m["tokens_seen"]) for m in of_type(events, "metrics")]


def first_step_note(events):
    notes = [e for e in of_type(events, "log") if "first_step_s" in e]
    assert len(notes) == 1, of_type(events, "log")
    return notes[0]


@pytest.mark.parametrize("backend", ["hf", "unsloth"])
def test_each_request_trains_as_a_cold_run_of_its_config(tiny_llama, data_dir, tmp_path, backend):
    """Run X, then Y (another seed, data order, rank, dropout, learning rate and accumulation) twice on the kept
    base: each Y has the losses of Y run cold, step for step; nothing of X's adapters, optimizer, data order or
    random state reaches it."""
    x = base_config(tiny_llama, data_dir, tmp_path / "x", backend=backend, max_steps=6, seed=1, random_state=1)
    y = base_config(tiny_llama, data_dir, tmp_path / "y", backend=backend, max_steps=6, seed=7, random_state=11, r=8,
                    lora_alpha=8, lora_dropout=0.1, learning_rate=1e-3, gradient_accumulation_steps=2)
    code, cold = run_cli(y, tmp_path)
    assert code == 0, cold[-1]
    warm = Warm(tmp_path, backend)
    try:
        first, second, third = warm.train(x), warm.train(y), warm.train(y)
    finally:
        assert warm.close() == 0
    for events in (first, second, third):
        assert events[-1]["type"] == "finished", events[-1]
    assert losses(second) == losses(cold) == losses(third)
    assert losses(first) != losses(second)
    assert [e["backend"] for e in (first[0], second[0])] == [backend, backend]
    assert [(e["warm_process"], e["base_kept"]) for e in (first[0], second[0], third[0])] == [
        (True, False), (True, True), (True, True)]
    assert (cold[0]["warm_process"], cold[0]["base_kept"]) == (False, False)
    # Each run's first step is noted, with how it started; in the warm process it comes well before the cold one's.
    assert first_step_note(third)["first_step_s"] < first_step_note(cold)["first_step_s"]
    assert "base model kept" in first_step_note(third)["message"]
    assert [r["runs"] for r in warm.ready] == [0, 1, 2, 3]
    assert [r["base"] for r in warm.ready[1:]] == [tiny_llama] * 3 and not any(r["note"] for r in warm.ready[1:])


def test_a_run_that_trains_its_base_keeps_no_base_and_the_next_loads_it_again(tiny_llama, data_dir, tmp_path):
    warm = Warm(tmp_path)
    try:
        biased = warm.train(base_config(tiny_llama, data_dir, tmp_path / "a", max_steps=2, bias="all"))
        after = warm.train(base_config(tiny_llama, data_dir, tmp_path / "b", max_steps=2))
    finally:
        warm.close()
    assert biased[-1]["type"] == after[-1]["type"] == "finished"
    assert warm.ready[1]["base"] is None and after[0]["base_kept"] is False


def test_a_stopped_request_ends_the_process(tiny_llama, data_dir, tmp_path):
    stop_file = tmp_path / "STOP"
    stop_file.touch()  # seen at the first step's end
    warm = Warm(tmp_path)
    events = warm.train(base_config(tiny_llama, data_dir, tmp_path / "a", max_steps=50), stop_file=str(stop_file))
    assert events[-1]["type"] == "stopped" and events[-1]["reason"] == "stop file"
    assert warm.proc.wait(timeout=60) == 0 and len(warm.ready) == 1


def test_a_failed_request_ends_the_process_naming_the_field(tiny_llama, data_dir, tmp_path):
    warm = Warm(tmp_path)
    events = warm.train(base_config(tiny_llama, data_dir, tmp_path / "a", r=0))
    assert events[-1]["type"] == "failed" and set(events[-1]["errors"]) == {"r"}
    assert warm.proc.wait(timeout=60) == 2

    warm = Warm(tmp_path)
    events = warm.train(base_config(tiny_llama, data_dir, tmp_path / "b", backend="unsloth"))
    assert events[-1]["type"] == "failed" and set(events[-1]["errors"]) == {"backend"}, events[-1]
    assert "imported the hf backend" in events[-1]["errors"]["backend"]
    assert warm.proc.wait(timeout=60) == 1
