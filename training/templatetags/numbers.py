"""How the pages write a number: thousands separators for counts, four significant digits otherwise (the run page's
script writes its live facts the same way)."""
import math
from datetime import timedelta
from typing import Any

from django import template

register = template.Library()


@register.filter
def figure(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4g}" if math.isfinite(value) else str(value)


@register.filter
def duration(value: timedelta | None) -> str:
    """A run's length as the runs table writes it: 42 s, 3 min 05 s, 2 h 07 min."""
    if value is None:
        return "—"
    seconds = max(int(value.total_seconds()), 0)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
