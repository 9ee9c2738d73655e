"""The guidance app: parameter content, calculators and the symptom detectors that record findings."""
from django.apps import AppConfig


class GuidanceConfig(AppConfig):
    name = "guidance"
    verbose_name = "Guidance"
