"""Data-parallel runs (config `devices` > 1): the engine's run command launches one process per GPU (a rank) and
watches them; each rank trains the whole model on its share of every step's batch (DDP through transformers'
Trainer: NCCL on GPUs, gloo on a CPU). Rank 0 alone reports the run's events, checkpoints and adapter.

Why a launcher of our own rather than torchrun: the run's stream must end with exactly one terminal event, and when
a rank dies the run must fail with that rank's own error. torchrun lets every rank's stdout through and, when one
fails, ends the rest: rank 0 then reports the broken connection to its dead peer as the run's error. Here each
rank's stdout comes back to the launcher, which relays rank 0's events as they come, holds every terminal event
until all ranks have ended, and reports the first failure (the first failed event by time; before it, a rank that
died without one). The ranks get the environment torchrun gives (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE,
MASTER_ADDR, MASTER_PORT), so transformers, accelerate and Unsloth's loader (which puts each rank on
cuda:LOCAL_RANK) see an ordinary torchrun job.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Mapping, Sequence

from .events import TERMINAL, EventSink, make_event

# NVLink multicast (NVLS) off in NCCL, PyTorch's symmetric memory and NVSHMEM: on the shared multi-GPU hosts this
# project is measured on, a program that uses it can put the host's GPUs out of service (the device tool's notes,
# KINDS.md). A worker's own environment may still set them otherwise.
MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
# What a launcher sets for its ranks; inherited values (a worker itself started by torchrun) are dropped first.
RANK_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "ROLE_WORLD_SIZE",
             "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")
# After a rank fails, the others get this long to end by themselves (gloo notices a dead peer at once; NCCL may
# wait in a collective) before they are killed.
FAILURE_GRACE_S = 5.0
# After rank 0 has reported, the others (they have no work after training) get this long to report.
AFTER_RANK0_S = 60.0
# After the result, the ranks get this long to exit (an engine process takes seconds) before they are killed.
EXIT_S = 30.0
MAX_DEVICES = 8


@dataclass(frozen=True)
class World:
    """This process's place in a data-parallel run: rank `rank` of `size` (1: a run of one process)."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world(environ: Mapping[str, str] | None = None) -> World:
    env = os.environ if environ is None else environ
    try:
        size = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        return World()
    return World(rank=rank, local_rank=local, size=max(size, 1))


def world_error(devices: int, here: World) -> str | None:
    """Why this process cannot be one of the run's ranks, else None."""
    if here.size == devices:
        return None
    if devices == 1:
        return (f"the config asks for 1 process, but this one is rank {here.rank} of {here.size} (started by a "
                "launcher such as torchrun); set devices to the launcher's number of processes, or start it alone")
    return (f"the config asks for {devices} processes, but this one is rank {here.rank} of {here.size}; start it "
            f"with `python -m training.engine run`, which launches the {devices} ranks itself")


def trainer_kwargs(devices: int, on_gpu: bool) -> dict:
    """What the trainer's arguments need for `devices` ranks. PEFT models get find_unused_parameters=True from
    transformers, which under gradient checkpointing crashes on the first backward (a LoRA weight marked ready twice);
    every LoRA weight gets a gradient each step, so False is right. On a CPU, transformers starts DDP only with
    use_cpu (otherwise each rank silently trains alone)."""
    if devices <= 1:
        return {}
    return {"ddp_find_unused_parameters": False, "ddp_backend": "nccl" if on_gpu else "gloo", "use_cpu": not on_gpu}


def bind_device(here: World) -> None:
    """Put this rank on its own GPU before anything is loaded (the hf backend loads onto the current device). On a
    CPU, let torch.load read tensors onto "cpu:N": resuming several ranks, transformers loads the optimizer state
    onto the rank's device, which on a CPU is "cpu:N", a location torch's own CPU loader does not accept."""
    if here.size <= 1:
        return
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(here.local_rank)
    else:
        torch.serialization.register_package(11, lambda _obj: None, _cpu_rank_location)


def _cpu_rank_location(storage, location: str):
    return storage if location.startswith("cpu:") else None


def agree(flag: bool, here: World) -> bool:
    """True on every rank if it is True on any (a stop seen by one rank stops all at the same step)."""
    if here.size <= 1:
        return flag
    import torch
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], device="cuda" if torch.cuda.is_available() else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def peaks(here: World) -> list[int] | None:
    """Each rank's peak GPU memory (torch's max_memory_allocated), in rank order; None on a CPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    mine = torch.cuda.max_memory_allocated()
    if here.size <= 1:
        return [int(mine)]
    import torch.distributed as dist

    t = torch.tensor([mine], dtype=torch.int64, device="cuda")
    out = [torch.zeros_like(t) for _ in range(here.size)]
    dist.all_gather(out, t)
    return [int(x.item()) for x in out]


class TerminalOnlySink(EventSink):
    """A rank other than 0 writes its terminal event only: the launcher needs its outcome, rank 0 reports the rest."""

    def emit(self, type_: str, **fields):
        if type_ not in TERMINAL:
            return make_event(type_, **fields)
        return super().emit(type_, **fields)


# ---- the launcher ----------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(base: Mapping[str, str], *, rank: int, size: int, port: int, cpu_count: int) -> dict[str, str]:
    """The environment of rank `rank` of `size`: the launcher's, without inherited rank variables, plus torchrun's
    variables, NVLink multicast off (unless the worker's environment says otherwise) and a share of the CPU cores for
    each rank's threads (unless OMP_NUM_THREADS is set)."""
    env = {k: v for k, v in base.items() if k not in RANK_VARS}
    env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(size), LOCAL_WORLD_SIZE=str(size), GROUP_RANK="0",
               ROLE_RANK=str(rank), ROLE_WORLD_SIZE=str(size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    for name, value in MULTICAST_OFF.items():
        env.setdefault(name, value)
    env.setdefault("OMP_NUM_THREADS", str(max(1, cpu_count // size)))
    env["PYTHONUNBUFFERED"] = "1"
    return env


PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if sys.platform == "linux" else None


def _die_with_launcher() -> None:
    # Between fork and exec: a rank whose launcher is killed is killed too (no rank outlives its run). The ranks
    # stay in the launcher's process group, so a kill of the group (the worker's) reaches them as well.
    if _libc is not None:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class Rank:
    rank: int
    process: subprocess.Popen
    returncode: int | None = None
    ended_at: float | None = None
    terminal: dict | None = None
    killed: bool = False  # by the launcher, after another rank failed
    eof: bool = False


def judge(ranks: Sequence[Rank], size: int) -> tuple[str, dict]:
    """The run's terminal event from its ranks' reports: rank 0's when no rank failed; otherwise the first failure:
    a rank that died without reporting (killed from outside, a crash: the others then only report a broken
    connection to it), else the earliest failed event by its time. A rank the launcher killed after another failed,
    or after rank 0 had reported, is not a cause."""
    died = [r for r in ranks if r.terminal is None and not r.killed and r.returncode not in (0, None)]
    if died:
        first = min(died, key=lambda r: r.ended_at or 0)
        how = (f"was killed by {signal.Signals(-first.returncode).name}" if first.returncode < 0
               else f"exited with code {first.returncode}")
        return "failed", {"step": _step(ranks), "error_class": "ProcessDied", "rank": first.rank,
                          "message": f"rank {first.rank} of {size} {how} without reporting a result",
                          "traceback": "", "oom": False}
    failed = [r for r in ranks if (r.terminal or {}).get("type") == "failed"]
    if failed:
        first = min(failed, key=lambda r: float(r.terminal.get("time") or 0))
        event = {k: v for k, v in first.terminal.items() if k not in ("v", "type", "time")}
        then = [{"rank": r.rank, "error_class": r.terminal.get("error_class"), "message": r.terminal.get("message")}
                for r in failed if r is not first]  # what the others reported after it (a broken connection, say)
        return "failed", {**event, "rank": first.rank, "other_ranks": then,
                          "message": f"rank {first.rank} of {size}: {event.get('message', '')}"}
    if ranks[0].terminal is not None:
        return ranks[0].terminal["type"], ranks[0].terminal
    return "failed", {"step": _step(ranks), "error_class": "ProcessDied", "rank": 0, "traceback": "", "oom": False,
                      "message": f"rank 0 of {size} ended without reporting a result (exit code {ranks[0].returncode})"}


def _step(ranks: Sequence[Rank]) -> int:
    steps = [int(r.terminal.get("step") or 0) for r in ranks if r.terminal]
    return max(steps, default=0)


def launch(devices: int, rank_args: Sequence[str], events_out: IO[str], *, log: IO[str] | None = None,
           environ: Mapping[str, str] | None = None) -> int:
    """Run `rank_args` (a command line) as `devices` ranks; relay rank 0's events to `events_out` and every rank's
    stderr, each line prefixed with its rank, to `log` (stderr). Returns 0 when the run finished or stopped, 1 when
    it failed. SIGTERM or SIGINT to the launcher is passed to every rank (each stops at the same step).

    The terminal event is written once every rank has reported or ended, before the processes have exited (an
    engine process takes seconds to exit after its result: the worker must not take that for a hung stop); then
    the launcher waits for them, and kills what is left after EXIT_S."""
    log = log or sys.stderr
    base = dict(os.environ if environ is None else environ)
    port = free_port()
    lines: queue.Queue[tuple[int, str | None]] = queue.Queue()
    ranks: list[Rank] = []
    log_lock = threading.Lock()

    def read_stdout(r: Rank) -> None:
        for line in r.process.stdout:
            lines.put((r.rank, line.rstrip("\n")))
        lines.put((r.rank, None))

    def read_stderr(r: Rank) -> None:
        for line in r.process.stderr:
            with log_lock:
                log.write(f"[rank {r.rank}] {line}" if line.endswith("\n") else f"[rank {r.rank}] {line}\n")
                log.flush()

    for rank in range(devices):
        env = rank_env(base, rank=rank, size=devices, port=port, cpu_count=os.cpu_count() or 1)
        process = subprocess.Popen(list(rank_args), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace", bufsize=1,
                                   preexec_fn=_die_with_launcher)
        ranks.append(Rank(rank, process))
    threads = [threading.Thread(target=fn, args=(r,), daemon=True) for r in ranks for fn in (read_stdout, read_stderr)]
    for thread in threads:
        thread.start()

    def pass_on(signum, _frame):
        for r in ranks:
            if r.process.poll() is None:
                r.process.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, pass_on) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        _follow(ranks, lines, events_out)
        kind, event = judge(ranks, devices)
        if kind == "failed":
            EventSink(events_out).emit("failed", **event)
        else:
            events_out.write(json.dumps(event) + "\n")
            events_out.flush()
        deadline = time.monotonic() + EXIT_S
        for r in ranks:
            try:
                r.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for r in ranks:  # nothing outlives the launch
            if r.process.poll() is None:
                r.process.kill()
            r.process.wait()
        for thread in threads:
            thread.join(timeout=5)
    return 1 if kind == "failed" else 0


def _follow(ranks: list[Rank], lines: queue.Queue, events_out: IO[str]) -> None:
    """Until every rank has reported its result or ended (its stdout read to the end): rank 0's events relayed (its
    started event with every rank's pid), the results kept; after a failure (or rank 0's result) the others are
    given a while, then killed."""
    deadline: float | None = None
    while True:
        try:
            rank, line = lines.get(timeout=0.2)
        except queue.Empty:
            rank, line = None, None
        if rank is not None:
            r = ranks[rank]
            if line is None:
                r.eof = True
            else:
                _take(r, line, ranks, events_out)
        now = time.monotonic()
        for r in ranks:
            if r.returncode is None and r.process.poll() is not None:
                r.returncode, r.ended_at = r.process.returncode, time.time()
        failing = any((r.terminal or {}).get("type") == "failed" or (r.terminal is None and r.returncode not in (0, None))
                      for r in ranks)
        if deadline is None and (failing or ranks[0].terminal is not None or ranks[0].returncode is not None):
            deadline = now + (FAILURE_GRACE_S if failing else AFTER_RANK0_S)
        if deadline is not None and now > deadline:
            for r in ranks:
                if r.terminal is None and r.process.poll() is None:
                    r.killed = True
                    r.process.kill()
        if all(r.terminal is not None or (r.returncode is not None and r.eof) for r in ranks):
            return


def _take(r: Rank, line: str, ranks: list[Rank], events_out: IO[str]) -> None:
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        event = None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        if r.rank == 0:  # not an event: the worker keeps it in the log, as it does a single process's
            events_out.write(line + "\n")
            events_out.flush()
        return
    if event["type"] in TERMINAL:
        r.terminal = r.terminal or event
        return
    if r.rank != 0:
        return
    if event["type"] == "started":
        event["ranks"] = [{"rank": x.rank, "pid": x.process.pid} for x in ranks]
        event["launcher_pid"] = os.getpid()
        line = json.dumps(event)
    events_out.write(line + "\n")
    events_out.flush()


def rank_command(config_path: str, *, stop_file: str | None, resume_from: str | None) -> list[str]:
    """The engine's run command for one rank (each reads the same config, stop file and checkpoint)."""
    args = [sys.executable, "-m", "training.engine", "run", config_path]
    if stop_file:
        args += ["--stop-file", stop_file]
    if resume_from:
        args += ["--resume-from", resume_from]
    return args


def config_for_ranks(path: str, data: dict, output_dir: str) -> str:
    """The config file the ranks read: the given one, or (read from stdin) a copy in the run's output folder."""
    if path != "-":
        return path
    out = Path(output_dir) / "ranks-config.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data))
    return str(out)
