"""The training child process: `python -m training.engine run` in its own process group, read line by line."""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import queue
import resource
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator

from django.conf import settings

from training.planner.slots import slot_threads
from training.runs.child_env import child_environment

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if sys.platform == "linux" else None


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if the worker is SIGKILLed, the kernel kills the training too,
    # so a lost run never keeps a GPU busy. (libc is loaded before the fork; this call allocates nothing.) The
    # signal follows the thread that started the child: a slot's thread lives as long as the worker's pool.
    if _libc is not None:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _child_setup(address_space_bytes: int) -> Callable[[], None]:
    """What runs in the child before exec: die with the worker and, on a CPU worker with a per-slot budget
    (TUNEBOARD_SLOT_ADDRESS_SPACE_MB), a limit on its address space, so a job that needs more fails out of memory
    by itself (torch's allocator raises) while the runs in the worker's other slots go on."""
    if not address_space_bytes:
        return _die_with_parent

    def setup() -> None:
        _die_with_parent()
        resource.setrlimit(resource.RLIMIT_AS, (address_space_bytes, address_space_bytes))

    return setup


class TrainingProcess:
    """One training job's process: its stdout (events) as lines, its stderr as new lines, stop and kill.
    `share_cores`: on a worker of several slots, limit its threads to one slot's share (unless the worker's own
    environment sets OMP_NUM_THREADS); off for a run that holds the whole worker (several ranks share the cores)."""

    def __init__(self, args: list[str], *, cwd: Path, stop_file: Path | None, stdin: bool = False,
                 share_cores: bool = True):
        threads = slot_threads(settings.TUNEBOARD_WORKER_SLOTS, len(os.sched_getaffinity(0))) if share_cores else None
        # An allow-list, not the worker's environment: a child runs a team's model, data and task, and must not hold
        # the database's URL, the secret key or any credential (training/runs/child_env.py).
        env = child_environment(os.environ, code_path=str(settings.BASE_DIR),
                                hub_offline=settings.TUNEBOARD_HUB_OFFLINE, threads=threads)
        self.stop_file = stop_file
        self._popen = subprocess.Popen(
            args, cwd=cwd, env=env, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, encoding="utf-8", errors="replace", bufsize=1,
            start_new_session=True,  # its own process group: a kill reaches every process the job started
            preexec_fn=_child_setup(settings.TUNEBOARD_SLOT_ADDRESS_SPACE_MB * 1024 * 1024),
        )
        self._stdout: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        self._stderr_lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._read_stdout, name=f"run-stdout-{self.pid}", daemon=True),
            threading.Thread(target=self._read_stderr, name=f"run-stderr-{self.pid}", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @property
    def pid(self) -> int:
        return self._popen.pid

    def _read_stdout(self) -> None:
        for line in self._popen.stdout:
            self._stdout.put(line.rstrip("\n"))
        self._stdout.put(None)

    def _read_stderr(self) -> None:
        for line in self._popen.stderr:
            # Progress bars redraw with \r: keep the last state of each line.
            line = line.rstrip("\n").rsplit("\r", 1)[-1]
            if line:
                with self._stderr_lock:
                    self._stderr.append(line)

    def batches(self, *, timeout: float, limit: int = 1000) -> Iterator[list[str]]:
        """stdout lines until the process closes it: each batch is every line waiting (up to `limit`), at least
        one; an empty batch whenever `timeout` passes with no line."""
        while True:
            try:
                line = self._stdout.get(timeout=timeout)
            except queue.Empty:
                yield []
                continue
            batch: list[str] = []
            while line is not None:
                batch.append(line)
                if len(batch) >= limit:
                    break
                try:
                    line = self._stdout.get_nowait()
                except queue.Empty:
                    break
            if batch:
                yield batch
            if line is None:
                return

    def write_line(self, line: str) -> bool:
        """One line to the child's stdin (opened with stdin=True); False once the child has closed it."""
        try:
            self._popen.stdin.write(line.rstrip("\n") + "\n")
            self._popen.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            return False
        return True

    def take_stderr(self) -> list[str]:
        """The stderr lines written since the last call."""
        with self._stderr_lock:
            lines, self._stderr = self._stderr, []
        return lines

    def request_stop(self) -> None:
        """Graceful: the engine checkpoints and reports `stopped` at the end of its current step."""
        if self.stop_file is not None:
            self.stop_file.touch()

    def poll(self) -> int | None:
        """The exit code once the process has ended, else None."""
        return self._popen.poll()

    def kill(self) -> None:
        try:
            os.killpg(self._popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float = 30.0) -> int:
        """The exit code (negative: killed by that signal); kills a process that closed stdout but lingers."""
        try:
            returncode = self._popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            returncode = self._popen.wait()
        for thread in self._threads:
            thread.join(timeout=5)
        return returncode
