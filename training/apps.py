"""The training app: datasets, presets, runs with their metrics and events, sweeps and workers."""
from django.apps import AppConfig


class TrainingConfig(AppConfig):
    name = "training"
    verbose_name = "Training"

    def ready(self) -> None:
        # Open websockets hear at once when their user loses access (membership deleted, user deactivated, ...).
        from training.live import access_signals

        access_signals.connect()
