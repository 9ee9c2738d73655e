"""Data-parallel runs: the world-size arithmetic, the `devices` field, each rank's environment, and the launcher
following real child processes (small scripts standing in for the engine's ranks: what each prints and when it
dies is the test's to choose)."""
import io
import json
import os
import signal
import sys
import threading
import time

import pytest

from training.engine import distributed
from training.engine.config import ConfigError, check_environment, parse_config
from training.engine.derived import derive

BASE = {"model": "/models/tiny", "train_file": "/data/train.jsonl"}


# ---- the arithmetic ----------------------------------------------------------------------------------------------

def test_derived_values_count_the_configs_devices():
    one = derive(parse_config({**BASE, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2,
                               "num_train_epochs": 3, "warmup_steps": 0.1}), num_examples=100)
    two = derive(parse_config({**BASE, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2,
                               "num_train_epochs": 3, "warmup_steps": 0.1, "devices": 2}), num_examples=100)
    # 100 rows in micro-batches of 4: 25 micro-batches, 2 a step: 13 steps an epoch (the last partial), 39 in all.
    assert (one.effective_batch, one.steps_per_epoch, one.total_steps, one.warmup_steps, one.devices) == (8, 13, 39, 4, 1)
    # Two ranks take 8 rows a micro-batch between them: 13 micro-batches, 7 steps an epoch, 21 in all, warmup 10%.
    assert (two.effective_batch, two.steps_per_epoch, two.total_steps, two.warmup_steps, two.devices) == (16, 7, 21, 3, 2)
    assert two.tokens_per_step == 2 * one.tokens_per_step


def test_an_explicit_devices_argument_still_wins():
    config = parse_config({**BASE, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 4, "devices": 2})
    assert derive(config).effective_batch == 16
    assert derive(config, devices=4).effective_batch == 32


@pytest.mark.parametrize("value, words", [(0, "0 is below 1: at least 1"), (9, "9 is above 8: at most 8"),
                                          (1.5, "integer")])
def test_devices_outside_1_to_8_are_refused_naming_the_field(value, words):
    with pytest.raises(ConfigError) as exc:
        parse_config({**BASE, "devices": value})
    assert words in exc.value.errors["devices"]


def test_more_ranks_than_the_workers_gpus_are_refused_before_loading():
    config = parse_config({**BASE, "devices": 4})
    with pytest.raises(ConfigError) as exc:
        check_environment(config, cuda=True, bf16=True, gpus=2)
    assert exc.value.errors["devices"] == "asks for 4 GPUs, one per rank; this worker has 2; allowed here: 1 to 2"
    check_environment(config, cuda=True, bf16=True, gpus=4)
    check_environment(config, cuda=False, bf16=False)  # a CPU: the ranks are CPU processes (gloo)


def test_a_4bit_unsloth_run_across_ranks_is_not_refused():
    # Unsloth 2026.10 loads a whole (4-bit) model per rank on cuda:LOCAL_RANK (models/loader.py, prepare_device_map);
    # what accelerate refuses, a 4-bit model spread over several GPUs, the engine never asks for.
    config = parse_config({**BASE, "backend": "unsloth", "load_in_4bit": True, "devices": 2})
    check_environment(config, cuda=True, bf16=True, gpus=2)


def test_world_from_torchruns_variables():
    assert distributed.world({}) == distributed.World(0, 0, 1)
    here = distributed.world({"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"})
    assert here == distributed.World(1, 1, 2) and not here.is_main
    assert distributed.world({"WORLD_SIZE": "x"}) == distributed.World()


def test_a_process_outside_the_configs_world_is_told_how_to_start():
    assert distributed.world_error(2, distributed.World(0, 0, 2)) is None
    assert distributed.world_error(1, distributed.World()) is None
    assert "python -m training.engine run" in distributed.world_error(2, distributed.World())
    assert "rank 1 of 2" in distributed.world_error(1, distributed.World(1, 1, 2))


def test_trainer_arguments_for_several_ranks():
    assert distributed.trainer_kwargs(1, on_gpu=True) == {}
    assert distributed.trainer_kwargs(2, on_gpu=True) == {"ddp_find_unused_parameters": False, "ddp_backend": "nccl",
                                                         "use_cpu": False}
    assert distributed.trainer_kwargs(2, on_gpu=False)["ddp_backend"] == "gloo"
    assert distributed.trainer_kwargs(2, on_gpu=False)["use_cpu"] is True


def test_each_ranks_environment():
    base = {"PATH": "/bin", "RANK": "7", "MASTER_PORT": "1", "NCCL_NVLS_ENABLE": "1"}
    env = distributed.rank_env(base, rank=1, size=2, port=29511, cpu_count=16)
    assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"], env["LOCAL_WORLD_SIZE"]) == ("1", "1", "2", "2")
    assert (env["MASTER_ADDR"], env["MASTER_PORT"], env["PATH"]) == ("127.0.0.1", "29511", "/bin")
    assert env["NCCL_NVLS_ENABLE"] == "1"  # the worker's own setting is kept
    assert env["TORCH_SYMM_MEM_DISABLE_MULTICAST"] == "1" and env["NVSHMEM_DISABLE_NVLS"] == "1"
    assert env["OMP_NUM_THREADS"] == "8"
    fresh = distributed.rank_env({}, rank=0, size=3, port=1, cpu_count=2)
    assert fresh["NCCL_NVLS_ENABLE"] == "0" and fresh["OMP_NUM_THREADS"] == "1"


def test_the_ranks_command_and_a_config_read_from_stdin(tmp_path):
    command = distributed.rank_command("cfg.json", stop_file="STOP", resume_from="ck/checkpoint-4")
    assert command[1:] == ["-m", "training.engine", "run", "cfg.json", "--stop-file", "STOP", "--resume-from",
                           "ck/checkpoint-4"]
    assert distributed.config_for_ranks("cfg.json", {}, str(tmp_path)) == "cfg.json"
    path = distributed.config_for_ranks("-", {"model": "m"}, str(tmp_path / "out"))
    assert json.loads(open(path).read()) == {"model": "m"}


# ---- the launcher, on stand-in ranks -----------------------------------------------------------------------------

PRELUDE = """
import json, os, signal, sys, time
rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
def emit(type_, **fields):
    print(json.dumps({"v": 1, "type": type_, "time": time.time(), **fields}), flush=True)
"""


def launch(script: str, devices: int = 2):
    out = io.StringIO()
    log = io.StringIO()
    started = time.monotonic()
    code = distributed.launch(devices, [sys.executable, "-c", PRELUDE + script], out, log=log)
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    return code, events, log.getvalue(), time.monotonic() - started


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_rank_0s_events_are_relayed_and_the_others_only_counted():
    code, events, log, _ = launch("""
emit("started", pid=os.getpid())
emit("log", message="env", env={k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "MASTER_PORT",
                                                                 "NCCL_NVLS_ENABLE")})
for step in (1, 2):
    emit("metrics", step=step, loss=3.0 - step, rank=rank)
print("a library's chatter", file=sys.stderr)
emit("finished", step=2, rank=rank)
""")
    assert code == 0
    assert [e["type"] for e in events] == ["started", "log", "metrics", "metrics", "finished"]
    assert {m["rank"] for m in events if m["type"] in ("metrics", "finished")} == {0}
    started = events[0]
    assert [r["rank"] for r in started["ranks"]] == [0, 1] and started["ranks"][0]["pid"] == started["pid"]
    assert started["launcher_pid"] == os.getpid()
    assert events[1]["env"]["WORLD_SIZE"] == "2" and events[1]["env"]["NCCL_NVLS_ENABLE"] in ("0", os.environ.get(
        "NCCL_NVLS_ENABLE"))
    assert "[rank 0] a library's chatter" in log and "[rank 1] a library's chatter" in log
    assert all(gone(r["pid"]) for r in started["ranks"])


def test_a_rank_that_fails_first_fails_the_run_with_its_own_error():
    code, events, _, _ = launch("""
emit("started", pid=os.getpid())
if rank == 1:
    emit("failed", step=3, error_class="ValueError", message="row 17 is not a chat", traceback="Trace...", oom=False)
    sys.exit(1)
time.sleep(0.5)  # rank 0 then finds its peer gone
emit("failed", step=3, error_class="DistBackendError", message="Connection closed by peer", traceback="", oom=False)
sys.exit(1)
""")
    assert code == 1
    terminal = [e for e in events if e["type"] in ("finished", "stopped", "failed")]
    assert len(terminal) == 1 and events[-1] is terminal[0]
    failed = terminal[0]
    assert failed["error_class"] == "ValueError" and failed["rank"] == 1
    assert failed["message"] == "rank 1 of 2: row 17 is not a chat" and failed["traceback"] == "Trace..."
    assert failed["other_ranks"] == [{"rank": 0, "error_class": "DistBackendError",
                                      "message": "Connection closed by peer"}]


def test_a_rank_killed_from_outside_is_the_cause_not_its_peers_broken_connection():
    code, events, _, _ = launch("""
emit("started", pid=os.getpid())
if rank == 1:
    os.kill(os.getpid(), signal.SIGKILL)
time.sleep(0.5)
emit("failed", step=2, error_class="DistBackendError", message="Connection reset by peer", traceback="", oom=False)
sys.exit(1)
""")
    assert code == 1
    failed = events[-1]
    assert failed["type"] == "failed" and failed["error_class"] == "ProcessDied" and failed["rank"] == 1
    assert failed["message"] == "rank 1 of 2 was killed by SIGKILL without reporting a result"


def test_a_rank_left_hanging_after_a_failure_is_killed(monkeypatch):
    monkeypatch.setattr(distributed, "FAILURE_GRACE_S", 0.5)
    code, events, _, seconds = launch("""
emit("started", pid=os.getpid())
if rank == 1:
    emit("failed", step=1, error_class="OutOfMemoryError", message="CUDA out of memory", traceback="", oom=True)
    sys.exit(1)
time.sleep(120)  # blocked in a collective with the dead rank
""")
    assert code == 1 and seconds < 30
    failed = events[-1]
    assert failed["error_class"] == "OutOfMemoryError" and failed["oom"] is True and failed["rank"] == 1
    assert all(gone(r["pid"]) for r in events[0]["ranks"])


def test_rank_0_ending_without_a_result_fails_the_run():
    code, events, _, _ = launch("""
emit("started", pid=os.getpid())
if rank == 1:
    emit("finished", step=1)
""")
    assert code == 1
    assert events[-1]["error_class"] == "ProcessDied" and "rank 0 of 2 ended without reporting" in events[-1]["message"]


def test_sigterm_to_the_launcher_reaches_every_rank_and_the_stop_is_rank_0s():
    class Out(io.StringIO):
        def write(self, text):
            if '"started"' in text:  # the ranks have their handlers: stop the launcher as a worker would
                threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
            return super().write(text)

    out, before = Out(), signal.getsignal(signal.SIGTERM)
    script = PRELUDE + """
stopping = []
signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
emit("started", pid=os.getpid())
deadline = time.time() + 30
while not stopping and time.time() < deadline:
    time.sleep(0.05)
emit("stopped", step=5, checkpoint="ck/checkpoint-5", reason="signal SIGTERM" if stopping else "timeout", rank=rank)
"""
    code = distributed.launch(2, [sys.executable, "-c", script], out, log=io.StringIO())
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert code == 0
    assert events[-1]["type"] == "stopped" and events[-1]["reason"] == "signal SIGTERM" and events[-1]["rank"] == 0
    assert signal.getsignal(signal.SIGTERM) is before  # the launcher put the previous handler back


def test_the_result_is_reported_as_soon_as_every_rank_has_reported_not_when_they_exit():
    class Out(io.StringIO):
        finished_at = None

        def write(self, text):
            if '"finished"' in text:
                Out.finished_at = time.monotonic()
            return super().write(text)

    out = Out()
    script = PRELUDE + """
emit("started", pid=os.getpid())
emit("finished", step=1)
time.sleep(3)  # an engine process takes seconds to exit after its result
"""
    code = distributed.launch(2, [sys.executable, "-c", script], out, log=io.StringIO())
    assert code == 0 and time.monotonic() - Out.finished_at > 2


def test_a_rank_that_never_reports_after_rank_0s_result_is_killed_and_the_result_stands(monkeypatch):
    monkeypatch.setattr(distributed, "AFTER_RANK0_S", 0.5)
    code, events, _, seconds = launch("""
emit("started", pid=os.getpid())
if rank == 0:
    emit("finished", step=4)
else:
    time.sleep(120)
""")
    assert code == 0 and events[-1]["type"] == "finished" and seconds < 30
