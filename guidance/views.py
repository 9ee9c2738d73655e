"""The guidance pages: an index of the parameters and one page per parameter, served only for known slugs."""
from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from guidance import content, glossary

# The calculators each parameter's page offers (static/js/calculators.js mirrors guidance/calculators.py).
CALCULATORS: dict[str, tuple[str, ...]] = {
    "gradient_accumulation_steps": ("step_plan", "grad_accum"),
    "warmup_steps": ("warmup",),
    "r": ("rank_range", "gain_alpha"),
    "lora_alpha": ("gain_alpha",),
    "use_rslora": ("gain_alpha",),
    "packing": ("step_plan",),
}


def _groups() -> list[dict]:
    guided = content.load_all()
    return [{"key": key, "title": title, "params": [g for g in guided.values() if g.group == key]}
            for key, title in content.GROUP_TITLES.items()]


@login_required
def guidance_index(request: HttpRequest) -> HttpResponse:
    return render(request, "guidance/index.html", {"groups": _groups(), "count": len(content.load_all()),
                                                   "glossary": sorted(glossary.TERMS.items())})


@login_required
def guidance_param(request: HttpRequest, param: str) -> HttpResponse:
    if not content.SLUG_RE.match(param):
        raise Http404("No such parameter")
    guided = content.load_all()
    if param not in guided:
        raise Http404("No such parameter")
    guidance = guided[param]
    return render(request, "guidance/param.html", {
        "g": guidance,
        "group_title": content.GROUP_TITLES[guidance.group],
        "sections": [{"name": name, **rendered} for name, rendered in guidance.sections.items()],
        "related": [guided[r] for r in guidance.related],
        "calculators": CALCULATORS.get(param, ()),
        "groups": _groups(),
    })
