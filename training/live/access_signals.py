"""Access changes pushed to the user's open websockets: when a membership is deleted or moved (another user, team or
role), a user is deactivated or deleted, or an API token revoked or deleted, the user's group
(training.live.send.user_group) gets an "access.changed" message once the transaction commits, and each of their
sockets re-checks at once (a token's sockets check the token too). Changes that send no signal (a queryset's
update(), bulk writes, raw SQL) or a message Redis lost are caught by the sockets' periodic re-check,
TUNEBOARD_WS_ACCESS_RECHECK_S. Connected by training.apps.TrainingConfig.ready()."""
from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_delete, post_save, pre_save

from dashboard.models import ApiToken, Membership
from training.live.send import send_access_changed

# What a saved membership was before the save, where it existed: (user_id, team_id, role).
_BEFORE = "_live_access_before"


def connect() -> None:
    pre_save.connect(membership_before_save, sender=Membership, dispatch_uid="live-access-membership-pre-save")
    post_save.connect(membership_saved, sender=Membership, dispatch_uid="live-access-membership-saved")
    post_delete.connect(membership_deleted, sender=Membership, dispatch_uid="live-access-membership-deleted")
    post_save.connect(user_saved, sender=settings.AUTH_USER_MODEL, dispatch_uid="live-access-user-saved")
    post_delete.connect(user_deleted, sender=settings.AUTH_USER_MODEL, dispatch_uid="live-access-user-deleted")
    post_save.connect(token_saved, sender=ApiToken, dispatch_uid="live-access-token-saved")
    post_delete.connect(token_deleted, sender=ApiToken, dispatch_uid="live-access-token-deleted")


def notify_on_commit(user_ids, using: str | None) -> None:
    """The message goes once the change is visible to the sockets' check, and not at all if it rolls back."""
    for user_id in {u for u in user_ids if u is not None}:
        transaction.on_commit(lambda user_id=user_id: send_access_changed(user_id), using=using)


def membership_before_save(sender, instance: Membership, raw: bool = False, using: str | None = None,
                           **kwargs) -> None:
    if raw or instance.pk is None:
        return
    # One read per membership save, which is rare (the admin, team pages); a new membership grants, never revokes.
    before = Membership.objects.using(using).filter(pk=instance.pk).values_list("user_id", "team_id", "role").first()
    setattr(instance, _BEFORE, before)


def membership_saved(sender, instance: Membership, created: bool, raw: bool = False, using: str | None = None,
                     **kwargs) -> None:
    before = instance.__dict__.pop(_BEFORE, None)
    if raw or created or before is None:
        return
    if before != (instance.user_id, instance.team_id, instance.role):
        notify_on_commit([before[0], instance.user_id], using)


def membership_deleted(sender, instance: Membership, using: str | None = None, **kwargs) -> None:
    notify_on_commit([instance.user_id], using)


def user_saved(sender, instance, created: bool, raw: bool = False, using: str | None = None, **kwargs) -> None:
    # Inactive after the save, not only "just became inactive": a save also catches an earlier deactivation made by
    # a queryset update; for a user with no socket open the message reaches no one.
    if raw or created or instance.is_active:
        return
    notify_on_commit([instance.pk], using)


def user_deleted(sender, instance, using: str | None = None, **kwargs) -> None:
    notify_on_commit([instance.pk], using)  # read now: Django clears the pk once the delete is done


def token_saved(sender, instance: ApiToken, created: bool, raw: bool = False, using: str | None = None,
                **kwargs) -> None:
    """A revoked token's sockets close (their re-check asks the token too: training.live.consumers)."""
    if raw or created or instance.revoked_at is None:
        return
    notify_on_commit([instance.user_id], using)


def token_deleted(sender, instance: ApiToken, using: str | None = None, **kwargs) -> None:
    notify_on_commit([instance.user_id], using)
