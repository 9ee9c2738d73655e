"""The Compare page's evaluation, rendered by the evaluation feature: compare/ cannot import it (its jobs run
through runs/, which imports compare's series), so the template asks for it by this tag."""
from django import template

from training.evaluation.compare import compare_section

register = template.Library()


@register.simple_tag
def compare_evaluation(runs):
    return compare_section(runs)
