"""The training app: datasets, presets, runs with their metrics and events, sweeps and workers."""
from django.apps import AppConfig


class TrainingConfig(AppConfig):
    name = "training"
    verbose_name = "Training"
