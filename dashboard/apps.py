"""The dashboard app: teams and their members, which every other object belongs to."""
from django.apps import AppConfig


class DashboardConfig(AppConfig):
    name = "dashboard"
    verbose_name = "Teams"
