"""The run page's export section, rendered by the export feature: runs/ cannot import it (an export executes through
runs' process module, so that import would be a cycle), the template includes it by this tag."""
from django import template

from training.export.views import run_section

register = template.Library()


@register.inclusion_tag("training/_run_export.html", takes_context=True)
def run_export(context, run):
    return {**run_section(context["request"], run), "csrf_token": context.get("csrf_token")}
