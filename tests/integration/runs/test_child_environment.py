"""Each kind of child a worker starts (a training run, an evaluation, an lm_eval task, a playground model, the LoftQ
check) sees none of the worker's secrets: read from /proc/<pid>/environ of the live engine process, while it runs,
on a real worker whose environment is full of them. Each works in its own folder."""
import threading
import time

import psutil
import pytest
from django.conf import settings

from tests.factories import tiny_overrides
from tests.integration.conftest import wait_for, wait_terminal
from tests.integration.evaluation.test_evaluation import DOCS, TASK, jsonl, make_suite, wait_evaluation
from tests.workers import start_worker, stop_worker
from training.evaluation import loftq
from training.evaluation import services as evaluations
from training.models import Evaluation, LoftqCheck, PlaygroundSession, Run, Worker
from training.playground import services as playground
from training.runs import services as runs

pytestmark = pytest.mark.django_db(transaction=True)

# What a worker's environment holds in production (docker-compose, a tracker, a cloud bucket, the hub), beside the
# DATABASE_URL, REDIS_URL and DJANGO_SETTINGS_MODULE it runs on.
SECRETS = {
    "SECRET_KEY": "tb-secret-key-do-not-leak",
    "MLFLOW_TRACKING_PASSWORD": "tb-secret-mlflow",
    "MLFLOW_TRACKING_USERNAME": "tb-secret-mlflow-user",
    "AWS_SECRET_ACCESS_KEY": "tb-secret-aws",
    "HF_TOKEN": "hf_tbsecret",
    "HUGGING_FACE_HUB_TOKEN": "hf_tbsecret2",
    "CUDA_SECRET_THING": "tb-secret-cuda",
}
NEVER = {"DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE", "TUNEBOARD_VAR_DIR", "TUNEBOARD_DEFAULT_QUEUE",
         *SECRETS}


class EngineWatcher(threading.Thread):
    """Records the environment and working folder of every `python -m training.engine <command>` process below
    `ancestor`, by command, while it runs."""

    def __init__(self, ancestor: int):
        super().__init__(daemon=True)
        self.ancestor = psutil.Process(ancestor)
        self.seen: dict[str, dict] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                children = self.ancestor.children(recursive=True)
            except psutil.NoSuchProcess:
                return
            for child in children:
                try:
                    cmdline = child.cmdline()
                    if "training.engine" in cmdline and child.pid not in {s["pid"] for s in self.seen.values()}:
                        command = cmdline[cmdline.index("training.engine") + 1]
                        self.seen.setdefault(command, {"pid": child.pid, "environ": child.environ(),
                                                       "cwd": child.cwd()})
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, IndexError):
                    continue
            time.sleep(0.02)

    def stop(self) -> dict[str, dict]:
        self.done.set()
        self.join(timeout=5)
        return self.seen


def assert_clean(seen: dict, command: str, secrets: dict[str, str]) -> None:
    assert command in seen, f"no live `training.engine {command}` process was seen; saw {sorted(seen)}"
    environ = seen[command]["environ"]
    assert environ.get("PATH"), environ  # it is the real process's environment, not an empty read
    assert not NEVER & set(environ), f"{command} child holds {sorted(NEVER & set(environ))}"
    leaked = [name for name, value in environ.items() if any(s in value for s in secrets.values())]
    assert not leaked, f"{command} child holds a secret in {leaked}"
    assert environ["PYTHONPATH"].split(":")[0] == str(settings.BASE_DIR)  # the engine is imported from the checkout


@pytest.fixture
def secret_worker(tmp_path):
    """A worker of its own queue whose environment is full of secrets, as a production worker's is."""
    worker = start_worker(queue=f"{settings.TUNEBOARD_DEFAULT_QUEUE}-secrets", name=f"secrets-{tmp_path.name}@test",
                          log=tmp_path / "worker.log", env={**SECRETS, "TUNEBOARD_PLAYGROUND_IDLE_S": "30"})
    yield worker
    stop_worker(worker)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_no_child_of_a_worker_sees_the_workers_secrets(secret_worker, tiny_model, team_member):
    team, user, dataset = team_member
    worker_env = psutil.Process(secret_worker.process.pid).environ()
    assert {"DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE", *SECRETS} <= set(worker_env)  # the worker has them
    secrets = {**SECRETS, "DATABASE_URL": worker_env["DATABASE_URL"], "REDIS_URL": worker_env["REDIS_URL"]}
    watcher = EngineWatcher(secret_worker.process.pid)
    watcher.start()
    try:
        run = runs.run_create(team=team, user=user, dataset=dataset, queue=secret_worker.queue,
                              overrides=tiny_overrides(tiny_model, max_steps=10))
        run = wait_terminal(run, timeout=240)
        assert run.status == Run.Status.SUCCEEDED, run.error

        evaluation = evaluations.evaluation_create(suite=make_suite(team, user), user=user, run=run)
        assert wait_evaluation(evaluation).status == Evaluation.Status.SUCCEEDED, evaluation.error
        suite = evaluations.suite_create_from_upload(team=team, user=user, name="harness", file=jsonl(DOCS),
                                                     filename="docs.jsonl", metric="lm_eval", task_config=TASK)
        harness = evaluations.evaluation_create(suite=suite, user=user, run=run)
        assert wait_evaluation(harness).status == Evaluation.Status.SUCCEEDED, harness.error

        session = playground.playground_start(run=run, user=user)
        wait_for(lambda: PlaygroundSession.objects.get(id=session.id).status in ("ready", "failed"), timeout=180,
                 what="the playground model to load")
        wait_for(lambda: "serve" in watcher.seen, timeout=10, what="the serving process")
        playground.playground_release(session=session, user=user)

        # The LoftQ check needs a CUDA GPU to finish: on a CPU machine its process starts, imports torch and fails,
        # which is long enough to read its environment. A GPU worker of the queue is recorded so that it is queued.
        Worker.objects.create(name=f"gpu-box@{secret_worker.queue}", hostname="gpu-box", queues=[secret_worker.queue],
                              gpus=[{"name": "NVIDIA H200", "memory_total": 143771}])
        check = loftq.loftq_check_create(team=team, user=user, dataset=dataset, queue=secret_worker.queue,
                                         config=tiny_overrides(tiny_model, loftq_config={"loftq_bits": 4}))
        wait_for(lambda: LoftqCheck.objects.get(id=check.id).status in ("succeeded", "failed"), timeout=120,
                 what="the LoftQ check to end")
    finally:
        seen = watcher.stop()
    for command in ("run", "evaluate", "harness", "serve", "loftq-check"):
        assert_clean(seen, command, secrets)
    assert seen["run"]["cwd"] == run.artifact_dir  # each works in its own folder
    assert seen["evaluate"]["cwd"] == str(settings.EVALS_DIR / str(evaluation.id))
    assert seen["harness"]["cwd"] == str(settings.EVALS_DIR / str(harness.id))
    assert seen["serve"]["cwd"] == str(settings.VAR_DIR / "playground" / str(session.id))
    assert seen["loftq-check"]["cwd"] == str(settings.EVALS_DIR / f"loftq-{check.id}")

