"""The lists' pagination, filters and ordering: {"count", "next", "previous", "results"}, ?page= and ?page_size=,
django-filter's filters, and ?ordering= refused by name when it names a column that is not offered."""
from __future__ import annotations

from django.core.paginator import InvalidPage
from django_filters import rest_framework as filters
from rest_framework.filters import OrderingFilter
from rest_framework.pagination import PageNumberPagination

from training.api.errors import bad_request
from training.models import Dataset, Sweep
from training.runs import filters as runs_filters


class Pagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200

    def paginate_queryset(self, queryset, request, view=None):
        for name, low, high in (("page", 1, None), ("page_size", 1, self.max_page_size)):
            text = request.query_params.get(name)
            if text is None:
                continue
            allowed = f"a whole number from {low}" + (f" to {high}" if high else "")
            if not text.isdecimal() or int(text) < low or (high and int(text) > high):
                raise bad_request({name: f"{text!r} is not a {name.replace('_', ' ')}; {allowed}"})
        self.request = request
        page_size = self.get_page_size(request)
        paginator = self.django_paginator_class(queryset, page_size)
        number = int(request.query_params.get("page", 1))
        try:
            self.page = paginator.page(number)
        except InvalidPage:
            raise bad_request({"page": f"page {number} is past the last page ({paginator.num_pages})"}) from None
        return list(self.page)


class StrictOrdering(OrderingFilter):
    """?ordering=-created_at,name; a column that is not offered is a 400 naming the allowed ones (DRF's own filter
    ignores it silently, which would hand back an order the caller did not ask for)."""

    def get_ordering(self, request, queryset, view):
        text = request.query_params.get(self.ordering_param)
        if not text:
            return self.get_default_ordering(view)
        allowed = [name for name, _ in self.get_valid_fields(queryset, view, {"request": request})]
        fields = [part.strip() for part in text.split(",") if part.strip()]
        unknown = [f for f in fields if f.lstrip("-") not in allowed]
        if unknown:
            raise bad_request({"ordering": f"cannot order by {', '.join(unknown)}; allowed: "
                                           f"{', '.join(allowed)} (a leading - for descending)"})
        # id last, so that rows with the same value keep one order across pages
        return fields + ([] if {"id", "-id"} & set(fields) else ["-id"])


class RunFilter(runs_filters.RunFilter):
    """The runs table's filters (q, mine, status, dataset, model, sweep, tag, team); `name` is the older q."""

    name = filters.CharFilter(field_name="name", lookup_expr="icontains", help_text="Part of the name")

    class Meta(runs_filters.RunFilter.Meta):
        fields = [*runs_filters.RunFilter.Meta.fields, "name"]


class DatasetFilter(filters.FilterSet):
    team = filters.NumberFilter(field_name="team_id")
    format = filters.ChoiceFilter(choices=Dataset.Format.choices)

    class Meta:
        model = Dataset
        fields = ["team", "format"]


class SweepFilter(filters.FilterSet):
    team = filters.NumberFilter(field_name="team_id")
    status = filters.MultipleChoiceFilter(choices=Sweep.Status.choices)
    dataset = filters.NumberFilter(field_name="dataset_id")
    template = filters.CharFilter(field_name="template")

    class Meta:
        model = Sweep
        fields = ["team", "status", "dataset", "template"]

