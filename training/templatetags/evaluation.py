"""The run page's evaluation section, rendered by the evaluation feature: runs/ cannot import it (evaluation
executes through runs' process module, so that import would be a cycle), the template includes it by this tag."""
from django import template

from training.evaluation.views import run_section

register = template.Library()


@register.inclusion_tag("training/_run_evaluation.html", takes_context=True)
def run_evaluation(context, run):
    return {**run_section(context["request"], run), "csrf_token": context.get("csrf_token")}
