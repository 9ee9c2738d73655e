"""The API tokens settings page: the user's own tokens (when made, last used, expiry, revoked), a new one (shown
once, on the page that made it) and revoke."""
from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from dashboard.models import ApiToken
from dashboard.tokens import services
from dashboard.tokens.forms import TokenForm


def _page(request: HttpRequest, form: TokenForm, *, new: tuple[ApiToken, str] | None = None,
          status: int = 200) -> HttpResponse:
    tokens = list(ApiToken.objects.filter(user=request.user).order_by("-created_at", "-id"))
    return render(request, "dashboard/api_tokens.html", {
        "form": form, "tokens": [(t, t.state()) for t in tokens], "new_token": new[1] if new else None,
        "new_token_row": new[0] if new else None, "api_base": request.build_absolute_uri("/api/v1/"),
        "docs_url": reverse("api:docs"),
    }, status=status)


@login_required
def token_list(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return _page(request, TokenForm())
    form = TokenForm(request.POST)
    if form.is_valid():
        try:
            made = services.token_create(user=request.user, **form.cleaned_data)
        except ValidationError as exc:
            for key, errors in exc.message_dict.items():
                for message in errors:
                    form.add_error(key if key in form.fields else None, message)
        else:
            # Rendered here, not after a redirect: the token is never stored, so this response is its only showing.
            response = _page(request, TokenForm(), new=made)
            response["Cache-Control"] = "no-store"
            return response
    return _page(request, form, status=400)


@require_POST
@login_required
def token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    token = ApiToken.objects.filter(id=token_id, user=request.user).first()
    if token is None:
        raise Http404("No such token")  # another user's looks like a missing one
    was_active = token.revoked_at is None
    services.token_revoke(token=token, user=request.user)
    if was_active:
        messages.success(request, f"Token {token.prefix}… ({token.name}) revoked: it no longer admits anyone, and "
                                  "websockets opened with it close.")
    return redirect("api_tokens")
