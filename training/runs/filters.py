"""The runs table's filters and sorts, read from the URL's GET parameters so that a view can be shared; the same
filters serve the API's runs list (training/api/lists.py)."""
from __future__ import annotations

from django.db.models import DurationField, ExpressionWrapper, F, QuerySet
from django.db.models.functions import Coalesce, Now
from django_filters import rest_framework as filters
from django_filters.widgets import BooleanWidget

from training.models import Run

# Sort keys of the URL → (column, label). Runs without the value (no eval yet, never started) sort last either way.
SORTS: dict[str, tuple[str, str]] = {
    "created": ("created_at", "Created"),
    "eval_loss": ("best_eval_loss", "Best eval loss"),
    "duration": ("duration", "Duration"),
    "name": ("name", "Run"),
}
DEFAULT_SORT = "-created"


def with_duration(runs: QuerySet[Run]) -> QuerySet[Run]:
    """duration: finished − started, or now − started while it trains; null until it started."""
    return runs.annotate(duration=ExpressionWrapper(Coalesce(F("finished_at"), Now()) - F("started_at"),
                                                    output_field=DurationField()))


class RunFilter(filters.FilterSet):
    """What the runs table and the API's runs list filter on; each is a GET parameter of the same name."""

    q = filters.CharFilter(field_name="name", lookup_expr="icontains", help_text="Part of the run's name")
    mine = filters.BooleanFilter(method="filter_mine", widget=BooleanWidget,
                                 help_text="true: only the runs you started")
    team = filters.NumberFilter(field_name="team_id", help_text="A team's id")
    status = filters.MultipleChoiceFilter(choices=Run.Status.choices, help_text="Repeat for several: status=a&status=b")
    dataset = filters.NumberFilter(field_name="dataset_id", help_text="A dataset's id")
    model = filters.CharFilter(field_name="model_name", help_text="The model, exactly as the run's config names it")
    sweep = filters.NumberFilter(field_name="sweep_id", help_text="A sweep's id")
    tag = filters.CharFilter(method="filter_tag", help_text="One of the run's tags")

    class Meta:
        model = Run
        fields = ["q", "mine", "team", "status", "dataset", "model", "sweep", "tag"]

    def filter_mine(self, runs: QuerySet[Run], name: str, value: bool | None) -> QuerySet[Run]:
        user = getattr(self.request, "user", None)
        if not value or user is None:
            return runs
        return runs.filter(created_by=user)

    def filter_tag(self, runs: QuerySet[Run], name: str, value: str) -> QuerySet[Run]:
        return runs.filter(tags__contains=[value.strip().lower()]) if value.strip() else runs


class RunTableFilter(RunFilter):
    """The runs table's: RunFilter and a sort (?sort=eval_loss, ?sort=-duration). The queryset it is given comes
    newest first: without a sort it stays so."""

    sort = filters.ChoiceFilter(
        method="filter_sort", help_text="created, eval_loss, duration or name; a leading - for descending",
        choices=[(f"{sign}{key}", f"{label}{' (descending)' if sign else ''}")
                 for key, (_, label) in SORTS.items() for sign in ("", "-")])

    def filter_sort(self, runs: QuerySet[Run], name: str, value: str) -> QuerySet[Run]:
        """Runs without the value (no eval yet, never started) last whichever way; newest first among ties."""
        column = SORTS[value.lstrip("-")][0]
        if column == "duration":
            runs = with_duration(runs)
        order = F(column).desc(nulls_last=True) if value.startswith("-") else F(column).asc(nulls_last=True)
        return runs.order_by(order, "-id")

    @property
    def sort_in_force(self) -> str:
        """The sort in force (the default when none or a bad one was asked)."""
        return (self.form.cleaned_data.get("sort") if self.is_valid() else None) or DEFAULT_SORT
