"""The one way a link to a parameter's guidance (and a section of it) is built."""
from django.urls import reverse

from guidance.content import SECTION_ANCHORS

# The section each finding's parameters link to: what the symptom means and which way to turn the knob.
IMPACT = SECTION_ANCHORS["Impact and symptoms"]


def guidance_url(param: str, section: str = "") -> str:
    url = reverse("guidance_param", args=[param])
    return f"{url}#{section}" if section else url
