"""The guidance app: parameter content, calculators and the symptom detectors that record findings."""
from django.apps import AppConfig


class GuidanceConfig(AppConfig):
    name = "guidance"
    verbose_name = "Guidance"

    def ready(self) -> None:
        from guidance import content

        # A broken guidance file must stop the web app and the workers at start-up, not 500 on the first page.
        content.load_all()
