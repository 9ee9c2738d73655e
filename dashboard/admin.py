"""Admin for teams and who is in them, and everyone's API tokens (to revoke)."""
from django.contrib import admin, messages

from dashboard.models import ApiToken, Membership, Team
from dashboard.tokens.services import token_revoke


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 1
    autocomplete_fields = ["user"]


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "created_at"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "team", "role"]
    list_filter = ["role", "team"]
    search_fields = ["user__username", "team__name"]
    autocomplete_fields = ["user", "team"]


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Every user's tokens, to see and revoke; a token is made by its user on their settings page (its text is shown
    only there), so none is added here."""

    list_display = ["name", "prefix", "user", "created_at", "last_used_at", "expires_at", "revoked_at", "state"]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter), "created_at"]
    search_fields = ["name", "prefix", "user__username"]
    readonly_fields = ["user", "name", "prefix", "digest", "created_at", "last_used_at", "expires_at", "revoked_at",
                       "revoked_by"]
    actions = ["revoke"]

    @admin.display(description="State")
    def state(self, token: ApiToken) -> str:
        return token.state()

    def has_add_permission(self, request) -> bool:
        return False

    @admin.action(description="Revoke the selected tokens")
    def revoke(self, request, queryset) -> None:
        revoked = 0
        for token in queryset:
            if token.revoked_at is None:
                token_revoke(token=token, user=request.user)
                revoked += 1
        self.message_user(request, f"{revoked} token{'s' if revoked != 1 else ''} revoked.", messages.SUCCESS)
