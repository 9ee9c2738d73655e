"""The token settings page's form: a name and an optional expiry."""
from __future__ import annotations

from django import forms


class TokenForm(forms.Form):
    EXPIRY = [("", "Never (until revoked)"), ("7", "In 7 days"), ("30", "In 30 days"), ("90", "In 90 days"),
              ("365", "In a year")]

    name = forms.CharField(max_length=100, help_text="Where it is used, e.g. 'CI on the eval box', 'my notebook'")
    expires_in_days = forms.TypedChoiceField(choices=EXPIRY, coerce=int, empty_value=None, required=False,
                                             label="Expires", help_text="After that it is refused (401, expired)")
