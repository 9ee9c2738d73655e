"""Serves plotly.js from the `plotly` Python package's own copy as static/vendor/plotly.min.js (no CDN, no copy in git)."""
from __future__ import annotations

from pathlib import Path

import plotly
from django.contrib.staticfiles.finders import BaseFinder
from django.core.files.storage import FileSystemStorage

PREFIX = "vendor"
NAME = "plotly.min.js"


class PlotlyFinder(BaseFinder):
    """Only plotly.min.js: the package's data folder also holds sample datasets nobody should be served."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.storage = FileSystemStorage(location=str(Path(plotly.__file__).resolve().parent / "package_data"))
        self.storage.prefix = PREFIX  # collectstatic and whitenoise put the file under this folder

    def check(self, **kwargs):
        return []

    def find(self, path, find_all=False, **kwargs):
        if path != f"{PREFIX}/{NAME}":
            return [] if find_all else None
        found = self.storage.path(NAME)
        return [found] if find_all else found

    def list(self, ignore_patterns):
        yield NAME, self.storage
