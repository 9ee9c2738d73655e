"""The training app: datasets, presets, runs with their metrics and events, sweeps and workers."""
from django.apps import AppConfig


class TrainingConfig(AppConfig):
    name = "training"
    verbose_name = "Training"

    def ready(self) -> None:
        # Open websockets hear at once when their user loses access (membership deleted, user deactivated, ...).
        from training.live import access_signals
        from training.sweeps import signals as sweep_signals

        access_signals.connect()
        # A sweep whose member's run is deleted judges that member failed instead of waiting for it.
        sweep_signals.connect()
