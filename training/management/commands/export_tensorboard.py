"""manage.py export_tensorboard RUN_ID DIR: a finished run's TensorBoard event files, written from what was stored."""
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from training.models import Run
from training.trackers.services import tensorboard_export


class Command(BaseCommand):
    help = ("Write a finished run's TensorBoard event files (its losses, gradient norm, learning rate, throughput, "
            "peak VRAM, config, findings and end) into DIR/run-<id>/; `tensorboard --logdir DIR` shows them.")

    def add_arguments(self, parser):
        parser.add_argument("run_id", type=int)
        parser.add_argument("directory", metavar="DIR")

    def handle(self, *args, run_id: int, directory: str, **options):
        run = Run.objects.filter(id=run_id).first()
        if run is None:
            raise CommandError(f"run_id: no run {run_id}")
        try:
            folder = tensorboard_export(run=run, directory=directory)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        except OSError as exc:
            raise CommandError(f"DIR: cannot write there ({exc})") from None
        self.stdout.write(f"Wrote run {run.id}'s TensorBoard files to {folder}")
