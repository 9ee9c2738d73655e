"""The API's JSON: non-finite numbers (a NaN loss) as the strings "nan", "inf" and "-inf", as the websocket and the
pages' JSON send them (training.engine.events.json_safe); strict JSON has no NaN, and DRF would fail on one."""
from __future__ import annotations

from rest_framework.renderers import JSONRenderer

from training.engine.events import json_safe


class SafeJSONRenderer(JSONRenderer):
    def render(self, data, accepted_media_type=None, renderer_context=None):
        return super().render(json_safe(data), accepted_media_type, renderer_context)
