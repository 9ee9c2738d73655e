"""Which parameters have a tuning procedure a sweep runs (training/sweeps/plan.py's TEMPLATES): the guidance page
offers "Run this procedure" for those only."""
from django import template

from training.sweeps import plan

register = template.Library()


@register.filter
def sweep_procedure(param: str) -> str:
    """The procedure's title for the parameter, or "" where no sweep template runs it."""
    found = plan.TEMPLATES.get(param)
    return found.title if found else ""
