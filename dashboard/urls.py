"""Tuneboard's URLs: the admin, log in/out, the API and its tokens' settings page, the OpenAI-compatible
endpoints, and each app's pages."""
from django.contrib import admin
from django.urls import include, path

from dashboard.tokens import views as token_views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/", include("training.api.urls")),
    path("v1/", include("training.openai_api.urls")),  # OpenAI's clients: base_url=<server>/v1
    path("settings/tokens/", token_views.token_list, name="api_tokens"),
    path("settings/tokens/<int:token_id>/revoke/", token_views.token_revoke, name="api_token_revoke"),
    path("", include("guidance.urls")),
    path("", include("training.urls")),
]
