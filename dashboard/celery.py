"""The Celery app: settings come from Django's (CELERY_*), tasks from each app's tasks.py."""
import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")

app = Celery("dashboard")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.worker_init.connect
def check_services(**kwargs) -> None:
    from dashboard.preflight import exit_unless_services_up

    exit_unless_services_up("The Tuneboard worker")


@signals.worker_init.connect
def import_training_libraries(**kwargs) -> None:
    """A worker with slots (a thread each) imports them before its first task (training/engine/libraries.py)."""
    from django.conf import settings

    if settings.CELERY_WORKER_POOL == "threads":
        from training.engine.libraries import import_up_front

        import_up_front()


@signals.worker_ready.connect
def start_heartbeat(sender, **kwargs) -> None:
    from training.workers import heartbeat

    pool = sender.controller.pool_cls.__module__
    solo = pool == "celery.concurrency.solo"
    # A worker's slots are the tasks it runs at once: what its pool really does, whatever a setting says.
    slots = 1 if solo else int(sender.controller.concurrency)
    heartbeat.start(name=sender.hostname, queues=sorted(sender.app.amqp.queues.consume_from or {}),
                    in_process=solo or pool == "celery.concurrency.thread", slots=slots)


@signals.worker_ready.connect
def start_warm_spares(sender, **kwargs) -> None:
    """Warm workers (training/runs/warm.py): a fresh trainer process for each slot, importing before runs arrive."""
    from training.runs import warm

    if warm.enabled():
        solo = sender.controller.pool_cls.__module__ == "celery.concurrency.solo"
        warm.pool.prestart(1 if solo else int(sender.controller.concurrency))


@signals.worker_shutdown.connect
def stop_heartbeat(**kwargs) -> None:
    from training.workers import heartbeat

    heartbeat.stop()


@signals.worker_shutdown.connect
def end_warm_processes(**kwargs) -> None:
    from training.runs import warm

    warm.pool.close()


@signals.task_prerun.connect
def free_warm_models(sender=None, args=None, **kwargs) -> None:
    """Idle warm processes give up the GPU memory they hold before a task that needs it (training/runs/warm.py)."""
    from training.runs import warm

    warm.before_task(getattr(sender, "name", ""), list(args or []))
