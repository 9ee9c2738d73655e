"""Findings: a symptom a detector saw in a run, with its evidence and the parameters to look at."""
from django.db import models


class Finding(models.Model):
    class Severity(models.TextChoices):
        INFO = "info", "Info"
        WARNING = "warning", "Warning"
        ERROR = "error", "Error"

    run = models.ForeignKey("training.Run", on_delete=models.CASCADE, related_name="findings")
    code = models.CharField(max_length=60)
    severity = models.CharField(max_length=10, choices=Severity.choices)
    step = models.PositiveIntegerField(default=0, help_text="The step the symptom was seen at; 0 for the config")
    title = models.CharField(max_length=200)
    message = models.TextField()
    evidence = models.JSONField(default=dict, blank=True)
    parameters = models.JSONField(default=list, blank=True, help_text="Config fields this finding is about")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["run", "step", "code"]
        constraints = [models.UniqueConstraint(fields=["run", "code", "step"], name="finding_run_code_step_unique")]

    def __str__(self) -> str:
        return f"{self.code} at step {self.step}"
