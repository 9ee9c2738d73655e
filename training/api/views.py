"""The REST API's endpoints under /api/v1/: each reads through the selectors and access rules the pages use and
writes through the same services, so a request is refused exactly where the page would refuse it (another team's
object: 404; a viewer's write: 403; bad input: 400 naming the field, training/api/errors.py)."""
from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.http import FileResponse, Http404, StreamingHttpResponse
from django.urls import Resolver404, resolve, reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from dashboard.models import Membership, Team
from training import access, selectors
from training.api import metrics
from training.api import serializers as s
from training.api.errors import bad_request, django_errors, error_dict
from training.api.lists import DatasetFilter, Pagination, RunFilter, StrictOrdering, SweepFilter
from training.compare import export, series
from training.datasets import services as dataset_services
from training.datasets.forms import DatasetProfileForm, DatasetRegisterForm, DatasetUploadForm
from training.evaluation.selectors import get_suite_for_user, run_evaluation_state
from training.export import selectors as export_selectors
from training.export import services as export_services
from training.models import Dataset, Preset, Run, Sweep
from training.runs import iterate
from training.runs.filters import with_duration
from training.runs import services as run_services
from training.sweeps import services as sweep_services
from training.sweeps.selectors import get_sweep_for_user, sweep_list_for, sweep_state
from training.trackers import services as tracker_services

Role = Membership.Role
ID = r"[0-9]+"


def _errors_of(form) -> dict[str, list[str]]:
    return error_dict({k: [e["message"] for e in v] for k, v in form.errors.get_json_data().items()})


def _renamed(error: ValidationError, names: dict[str, str]) -> ValidationError:
    """The services' errors with their keys as the API's request names them (the run form's "start_from" is
    base_run here)."""
    return ValidationError({names.get(k, k): v for k, v in django_errors(error).items()})


def _object(request: Request) -> Any:
    """The request's body, which must be an object (a JSON object, or a form's fields)."""
    if not hasattr(request.data, "items"):
        raise bad_request({"__all__": f"the body must be a JSON object, not {type(request.data).__name__}"})
    return request.data


def _found(getter, user, object_id: Any, field: str, what: str):
    """An object a request body names: its id looked up with the page's team-scoped getter; any other id (another
    team's, a missing one, not an id) is a 400 on that field."""
    if object_id is None:
        return None
    try:
        return getter(user, int(object_id))
    except (Http404, TypeError, ValueError):
        raise bad_request({field: f"no such {what} in your teams: {object_id!r}"}) from None


def _team_for_write(request: Request, value: Any, *, role: str, action: str) -> Team:
    """The team a write names (by id) in the request; without one, the caller's only team where `role` allows it.
    Another team is a 400 on `team`; a team where the caller's role is too low, a 403."""
    user = request.user
    if value in (None, ""):
        allowed = list(access.team_list_where(user, role).order_by("name"))
        if len(allowed) == 1:
            return allowed[0]
        if not allowed:
            teams = ", ".join(t.name for t in access.team_list_for(user)) or "none"
            raise PermissionDenied(f"{action} needs the {role} role in a team (yours: {teams})")
        names = ", ".join(f"{t.id} ({t.name})" for t in allowed)
        raise bad_request({"team": f"you may do this in {len(allowed)} teams; give one's id: {names}"})
    team = access.team_list_for(user).filter(id=value).first() if str(value).isdecimal() else None
    if team is None:
        raise bad_request({"team": f"no such team of yours: {value!r}"})
    access.require_role(user=user, team=team, role=role, action=action)
    return team


# Who is asking ---------------------------------------------------------------------------------------------------

class MeView(APIView):
    @extend_schema(responses=s.MeSerializer, summary="The caller and their teams with their role in each")
    def get(self, request: Request) -> Response:
        teams = [{"id": m.team.id, "name": m.team.name, "slug": m.team.slug, "role": m.role}
                 for m in access.memberships_for(request.user)]
        return Response({"username": request.user.get_username(), "teams": teams})


# Datasets --------------------------------------------------------------------------------------------------------

class DatasetViewSet(viewsets.GenericViewSet):
    serializer_class = s.DatasetSerializer
    pagination_class = Pagination
    filterset_class = DatasetFilter
    filter_backends = [*viewsets.GenericViewSet.filter_backends, StrictOrdering]
    ordering_fields = ["id", "name", "created_at", "rows"]
    ordering = ["-created_at", "-id"]
    lookup_value_regex = ID
    queryset = Dataset.objects.none()  # the schema's model; the rows come from get_queryset

    def get_queryset(self):
        return access.dataset_list_for(self.request.user).select_related("created_by")

    @extend_schema(summary="The datasets of your teams (team=, format=, ordering=)")
    def list(self, request: Request) -> Response:
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        return self.get_paginated_response(s.DatasetSerializer(page, many=True).data)

    @extend_schema(responses=s.DatasetDetailSerializer, summary="A dataset, its file and its token statistics")
    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(s.DatasetDetailSerializer(access.get_dataset_for_user(request.user, int(pk))).data)

    @extend_schema(request={"multipart/form-data": s.DatasetUploadSerializer},
                   responses={201: s.DatasetDetailSerializer},
                   summary="Upload a dataset file: every row checked as on the Datasets page")
    def create(self, request: Request) -> Response:
        body = _object(request)
        team = _team_for_write(request, body.get("team"), role=Role.MEMBER, action="Adding a dataset")
        data = body.copy() if hasattr(body, "copy") else dict(body)
        data["team"] = str(team.id)
        form = DatasetUploadForm(data, request.FILES, user=request.user)
        if not form.is_valid():
            raise bad_request(_errors_of(form))
        dataset = dataset_services.dataset_create_from_upload(
            team=team, user=request.user, name=form.cleaned_data["name"], file=form.cleaned_data["file"],
            filename=form.cleaned_data["file"].name, mapping=form.mapping())
        return Response(s.DatasetDetailSerializer(dataset).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.DatasetRegisterSerializer, responses={201: s.DatasetDetailSerializer},
                   summary="Register a file already on the shared storage (team admins)")
    @action(detail=False, methods=["post"])
    def register(self, request: Request) -> Response:
        body = _object(request)
        team = _team_for_write(request, body.get("team"), role=Role.ADMIN, action="Registering a dataset path")
        form = DatasetRegisterForm(user=request.user)
        data = {form.add_prefix(k): v for k, v in body.items() if k != "team"}
        form = DatasetRegisterForm({**data, form.add_prefix("team"): str(team.id)}, user=request.user)
        if not form.is_valid():
            raise bad_request(_errors_of(form))
        dataset = dataset_services.dataset_register(team=team, user=request.user, name=form.cleaned_data["name"],
                                                    path=form.cleaned_data["path"], mapping=form.mapping())
        return Response(s.DatasetDetailSerializer(dataset).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.DatasetProfileSerializer, responses={202: s.DatasetDetailSerializer},
                   summary="Start the token statistics with a model's tokenizer (a cpu worker computes them)")
    @action(detail=True, methods=["post"])
    def profile(self, request: Request, pk: str) -> Response:
        dataset = access.get_dataset_for_user(request.user, int(pk))
        access.require_role(user=request.user, team=dataset.team, role=Role.MEMBER, action="Profiling a dataset")
        # A field left out takes the page form's initial value, as the page pre-fills it.
        initial = {name: f.initial for name, f in DatasetProfileForm.base_fields.items() if f.initial is not None}
        data = {**initial, **dict(_object(request).items())}
        form = DatasetProfileForm(data, dataset=dataset)
        if not form.is_valid():
            raise bad_request(_errors_of(form))
        dataset_services.dataset_profile_start(dataset=dataset, user=request.user, **form.cleaned_data)
        dataset.refresh_from_db()
        return Response(s.DatasetDetailSerializer(dataset).data, status=status.HTTP_202_ACCEPTED)


# Presets ---------------------------------------------------------------------------------------------------------

class PresetViewSet(viewsets.GenericViewSet):
    serializer_class = s.PresetSerializer
    pagination_class = Pagination
    lookup_value_regex = ID
    queryset = Preset.objects.none()

    @extend_schema(parameters=[OpenApiParameter("team", int, description="Only this team's (and the global ones)")],
                   summary="Your teams' presets and the global ones")
    def list(self, request: Request) -> Response:
        team_id = request.query_params.get("team")
        team = None
        if team_id is not None:
            team = access.team_list_for(request.user).filter(id=team_id).first() if team_id.isdecimal() else None
            if team is None:
                raise bad_request({"team": f"no such team of yours: {team_id!r}"})
        presets = access.preset_list_for(request.user, team=team).order_by("team__name", "name", "id")
        return self.get_paginated_response(s.PresetSerializer(self.paginate_queryset(presets), many=True).data)

    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(s.PresetSerializer(access.get_preset_for_user(request.user, int(pk))).data)


# Runs ------------------------------------------------------------------------------------------------------------

def _run_row(user, run_id: int) -> Run:
    """The run with its list columns (queue position, findings), scoped like every run read."""
    run = selectors.run_list_for(user).select_related("created_by").filter(id=run_id).first()
    if run is None:
        raise Http404("No such run")
    return run


# What a row of the list does not show: the large JSON and text columns, left in the database.
LIST_DEFERRED = ("config", "derived", "versions", "started", "preflight", "plan", "log_tail", "traceback", "error",
                 "held_reason")


class RunViewSet(viewsets.GenericViewSet):
    serializer_class = s.RunSerializer
    pagination_class = Pagination
    filterset_class = RunFilter
    filter_backends = [*viewsets.GenericViewSet.filter_backends, StrictOrdering]
    ordering_fields = ["id", "created_at", "name", "status", "last_step", "started_at", "finished_at",
                       "best_eval_loss", "duration"]
    ordering = ["-created_at", "-id"]
    lookup_value_regex = ID
    queryset = Run.objects.none()

    def get_queryset(self):
        # duration is computed only when ordering=duration reads it
        return with_duration(Run.objects.filter(team_id__in=access.team_ids_for(self.request.user)))

    @extend_schema(summary="Your teams' runs, newest first (q=, mine=, status=, dataset=, model=, sweep=, tag=, "
                           "team=, ordering=)")
    def list(self, request: Request) -> Response:
        # The page's ids from the filtered, ordered index scan alone; only those rows get the list's per-run columns
        # (as the run list page does: selectors.run_page_for), so a deep page costs what the first does.
        ids = self.paginate_queryset(self.filter_queryset(self.get_queryset()).values_list("id", flat=True))
        rows = selectors.run_list_for(request.user).select_related("created_by").defer(*LIST_DEFERRED)
        by_id = {run.id: run for run in rows.filter(id__in=ids)}
        rows = [by_id[i] for i in ids if i in by_id]
        return self.get_paginated_response(s.RunSerializer(rows, many=True).data)

    @extend_schema(responses=s.RunDetailSerializer, summary="A run: status, config, derived values, plan, notes")
    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(s.RunDetailSerializer(_run_row(request.user, int(pk))).data)

    @extend_schema(request=s.RunCreateSerializer, responses={201: s.RunDetailSerializer},
                   summary="Start a run: a dataset, a preset and overrides, checked as the New run form checks them")
    def create(self, request: Request) -> Response:
        body = s.RunCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        v, user = body.validated_data, request.user
        parent = _found(access.get_run_for_user, user, v.get("from_run"), "from_run", "run")
        given = set(_object(request))
        if parent is not None:
            # The parent's start, each part replaced by what the body gives (validated_data has the defaults too).
            start = iterate.run_start(parent)
            v = {**v, "overrides": {**start.overrides, **v["overrides"]}}
            if "dataset" not in given:
                v["dataset"] = parent.dataset_id
            if "preset" not in given:
                v["preset"] = parent.preset_id
            if "base_run" not in given and parent.base_run_id:
                v.update(base_run=parent.base_run_id, base_kind=parent.base_kind)
            if "eval_suites" not in given:
                v["eval_suites"] = list(parent.eval_suites.values_list("id", flat=True))
            if "eval_checkpoints" not in given:
                v["eval_checkpoints"] = parent.eval_checkpoints
            if "trackers" not in given:
                v["trackers"] = list(parent.trackers or [])
            if "queue" not in given:
                v["queue"] = parent.queue
        elif v.get("dataset") is None:
            raise bad_request({"dataset": "required: a dataset id of your team, or from_run: a run to start from"})
        dataset = _found(access.get_dataset_for_user, user, v["dataset"], "dataset", "dataset")
        preset = _found(access.get_preset_for_user, user, v.get("preset"), "preset", "preset")
        base_run = _found(access.get_run_for_user, user, v.get("base_run"), "base_run", "run")
        suites = [_found(get_suite_for_user, user, i, "eval_suites", "eval suite") for i in v["eval_suites"]]
        try:
            run = run_services.run_create(
                team=dataset.team, user=user, dataset=dataset, preset=preset, overrides=v["overrides"],
                name=v.get("name") or "", queue=v.get("queue") or None, base_run=base_run, base_kind=v["base_kind"],
                eval_suites=suites, eval_checkpoints=v["eval_checkpoints"], trackers=v["trackers"], parent=parent)
        except ValidationError as exc:
            raise _renamed(exc, {"start_from": "base_run", "parent": "from_run"}) from None
        return Response(s.RunDetailSerializer(_run_row(user, run.id)).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=s.RunDetailSerializer,
                   summary="Stop a run: a queued one at once, a training one at its next step (with a checkpoint)")
    @action(detail=True, methods=["post"])
    def stop(self, request: Request, pk: str) -> Response:
        run = access.get_run_for_user(request.user, int(pk))
        run_services.run_stop(run=run, user=request.user)
        return Response(s.RunDetailSerializer(_run_row(request.user, run.id)).data)

    @extend_schema(request=s.RunResumeSerializer, responses={201: s.RunDetailSerializer},
                   summary="Resume a stopped, lost or failed run from its last checkpoint, as a new run")
    @action(detail=True, methods=["post"])
    def resume(self, request: Request, pk: str) -> Response:
        run = access.get_run_for_user(request.user, int(pk))
        body = s.RunResumeSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        continuation = run_services.run_resume(run=run, user=request.user, queue=body.validated_data.get("queue")
                                               or None)
        return Response(s.RunDetailSerializer(_run_row(request.user, continuation.id)).data,
                        status=status.HTTP_201_CREATED)

    @extend_schema(parameters=metrics.PARAMETERS, responses={
        200: OpenApiResponse(s.MetricsSerializer, description="JSON; with format=csv, text/csv with a header row")},
        summary="The run's metric points (its resume chain's curve), as JSON or CSV, with a step range and "
                "downsampling")
    @action(detail=True, methods=["get"])
    def metrics(self, request: Request, pk: str) -> StreamingHttpResponse:
        run = access.get_run_for_user(request.user, int(pk))
        query = metrics.parse(request.query_params)
        return metrics.response(run, query)

    @extend_schema(parameters=[OpenApiParameter("after", int, description="Only events after this seq")],
                   responses=s.EventSerializer(many=True), summary="The run's events other than metric points")
    @action(detail=True, methods=["get"])
    def events(self, request: Request, pk: str) -> Response:
        run = access.get_run_for_user(request.user, int(pk))
        after = request.query_params.get("after", "0")
        if not after.isdecimal():
            raise bad_request({"after": f"{after!r} is not an event seq; a whole number >= 0"})
        return Response(selectors.run_events(run, after_seq=int(after)))

    @extend_schema(responses=s.FindingSerializer(many=True),
                   summary="What the symptom detectors found, with the parameters to look at")
    @action(detail=True, methods=["get"])
    def findings(self, request: Request, pk: str) -> Response:
        run = access.get_run_for_user(request.user, int(pk))
        return Response([selectors.finding_dict(f) for f in selectors.run_findings(run)])

    @extend_schema(responses=s.SampleSerializer(many=True), summary="The generations made at the eval steps")
    @action(detail=True, methods=["get"])
    def samples(self, request: Request, pk: str) -> Response:
        return Response(selectors.run_samples(access.get_run_for_user(request.user, int(pk))))

    @extend_schema(responses=s.AdapterFileSerializer(many=True),
                   summary="The files of the run's saved adapter ([] until it saved one)")
    @action(detail=True, methods=["get"])
    def adapter(self, request: Request, pk: str) -> Response:
        run = access.get_run_for_user(request.user, int(pk))
        return Response([{**f, "url": reverse("api:run-adapter-file", args=[run.id, f["name"]])}
                         for f in selectors.run_adapter_files(run)])

    @extend_schema(responses={(200, "application/octet-stream"): OpenApiTypes.BINARY},
                   summary="One file of the run's adapter (routed in urls.py: no trailing slash after a file name)")
    def adapter_file(self, request: Request, pk: str, name: str) -> FileResponse:
        run = access.get_run_for_user(request.user, int(pk))
        path = selectors.run_adapter_file(run, name)
        return FileResponse(path.open("rb"), as_attachment=True, filename=path.name)

    @extend_schema(responses={(200, "application/zip"): OpenApiTypes.BINARY},
                   summary="The run's TensorBoard event files as a zip (a folder run-<id>/ inside): those its worker "
                           "wrote, or, once it has ended, written from what was stored; 400 on 'run' before then")
    @action(detail=True, methods=["get"])
    def tensorboard(self, request: Request, pk: str) -> FileResponse:
        run = access.get_run_for_user(request.user, int(pk))
        try:
            archive = tracker_services.tensorboard_zip(run)
        except ValidationError as exc:
            raise bad_request(django_errors(exc)) from None
        return FileResponse(archive, as_attachment=True, filename=f"run-{run.id}-tensorboard.zip",
                            content_type="application/zip")

    @extend_schema(methods=["GET"], responses=s.ExportSerializer(many=True),
                   summary="The run's GGUF exports, newest first, with their progress and files")
    @extend_schema(methods=["POST"], request=s.ExportCreateSerializer, responses={201: s.ExportSerializer},
                   summary="Export a succeeded run as GGUF (merged 16-bit and quantizations, the adapter as a GGUF "
                           "LoRA) with Ollama Modelfiles, on the run's worker; the same export under way is returned")
    @action(detail=True, methods=["get", "post"])
    def exports(self, request: Request, pk: str) -> Response:
        run = access.get_run_for_user(request.user, int(pk))
        if request.method == "GET":
            return Response(export_selectors.run_exports(run, api=True))
        body = _object(request)
        unknown = sorted(set(body) - set(s.ExportCreateSerializer().fields))
        if unknown:
            raise bad_request({k: "not a field of an export; allowed: quantizations, merged_gguf, lora_gguf, queue"
                               for k in unknown})
        checked = s.ExportCreateSerializer(data=body)
        checked.is_valid(raise_exception=True)
        v = checked.validated_data
        export = export_services.export_create(
            run=run, user=request.user, quantizations=v.get("quantizations"), merged_gguf=v.get("merged_gguf", True),
            lora_gguf=v.get("lora_gguf", True), queue=v.get("queue") or None)
        return Response(export_selectors.export_dict(export, api=True), status=status.HTTP_201_CREATED)

    @extend_schema(parameters=[OpenApiParameter("examples", bool, description="With the examples each got wrong")],
                   responses=s.EvaluationsSerializer, summary="The run's evaluations on eval suites")
    @action(detail=True, methods=["get"])
    def evaluations(self, request: Request, pk: str) -> Response:
        run = access.get_run_for_user(request.user, int(pk))
        examples = request.query_params.get("examples", "0").lower() in ("1", "true", "yes")
        return Response(run_evaluation_state(run, with_examples=examples))


# GGUF exports ----------------------------------------------------------------------------------------------------

class ExportView(APIView):
    @extend_schema(responses=s.ExportSerializer, summary="A GGUF export: status, progress, files with sizes and sha256")
    def get(self, request: Request, pk: int) -> Response:
        return Response(export_selectors.export_dict(export_selectors.get_export_for_user(request.user, pk), api=True))


class ExportFileView(APIView):
    @extend_schema(responses={(200, "application/octet-stream"): OpenApiTypes.BINARY},
                   summary="One file of a succeeded export, by the name its files list gives (no trailing slash)")
    def get(self, request: Request, pk: int, name: str) -> FileResponse:
        export = export_selectors.get_export_for_user(request.user, pk)
        path = export_services.export_file(export, name)
        return FileResponse(path.open("rb"), as_attachment=True, filename=path.name)


# Compare ---------------------------------------------------------------------------------------------------------

COMPARE_PARAMETERS = [
    OpenApiParameter("runs", str, description="2 to 20 run ids, comma-separated (or sweep=)"),
    OpenApiParameter("sweep", int, description="The runs of this sweep's latest phase"),
    OpenApiParameter("x", str, enum=list(series.X_AXES)),
    OpenApiParameter("metric", str, description=f"Comma-separated, of {', '.join(series.METRICS)}"),
    OpenApiParameter("smooth", float), OpenApiParameter("x0", float), OpenApiParameter("x1", float),
    OpenApiParameter("group", str, description="A config field to group the runs by"),
]


def _compare_error(error: series.CompareError):
    return bad_request({error.field: f"{error.message} (allowed: {error.allowed})"})


def _compared_runs(request: Request) -> tuple[series.CompareQuery, list[Run]]:
    try:
        query = series.parse_query(request.query_params,
                                   run_ids=series.request_run_ids(request.query_params, request.user))
    except series.CompareError as error:
        raise _compare_error(error) from None
    return query, series.runs_for_user(request.user, query.run_ids)


class CompareView(APIView):
    @extend_schema(parameters=COMPARE_PARAMETERS, responses=s.CompareSerializer,
                   summary="The Compare page's data: what differs, the outcomes, the guidance, findings and series")
    def get(self, request: Request) -> Response:
        query, runs = _compared_runs(request)
        page = series.compare_page(runs)
        findings = selectors.findings_for_runs(runs)
        return Response({
            "runs": [{"id": r.id, "name": r.name, "legend": page.legend[r.id], "status": r.status,
                      "config": {row["name"]: row["raw"][i] for row in page.parameters if row["differs"]},
                      "outcomes": page.outcomes[r.id]} for i, r in enumerate(runs)],
            "differing": page.differing, "parameters": page.parameters, "guidance": page.guidance,
            "findings": {str(k): v for k, v in findings.items()},
            "series": series.series_payload(runs, query),
        })


class CompareExportView(APIView):
    @extend_schema(parameters=[*COMPARE_PARAMETERS[:2], OpenApiParameter("format", str, enum=["csv", "json"])],
                   responses={(200, "text/csv"): OpenApiTypes.STR, (200, "application/json"): OpenApiTypes.OBJECT},
                   summary="The compared runs' full-resolution points (as the Compare page's export)")
    def get(self, request: Request) -> StreamingHttpResponse:
        fmt = request.query_params.get("format", "csv")
        if fmt not in ("csv", "json"):
            raise bad_request({"format": f"{fmt!r} is not an export format; allowed: csv, json"})
        try:
            run_ids = series.request_run_ids(request.query_params, request.user)
        except series.CompareError as error:
            raise _compare_error(error) from None
        runs = series.runs_for_user(request.user, run_ids)
        if fmt == "csv":
            response = StreamingHttpResponse(export.csv_lines(runs), content_type="text/csv; charset=utf-8")
        else:
            response = StreamingHttpResponse(export.json_chunks(runs, series.compare_page(runs)),
                                             content_type="application/json")
        response["Content-Disposition"] = f'attachment; filename="compare-{"-".join(str(r.id) for r in runs)}.{fmt}"'
        return response


# Sweeps ----------------------------------------------------------------------------------------------------------

class SweepViewSet(viewsets.GenericViewSet):
    serializer_class = s.SweepSerializer
    pagination_class = Pagination
    filterset_class = SweepFilter
    filter_backends = [*viewsets.GenericViewSet.filter_backends, StrictOrdering]
    ordering_fields = ["id", "created_at", "name", "status"]
    ordering = ["-created_at", "-id"]
    lookup_value_regex = ID
    queryset = Sweep.objects.none()

    def get_queryset(self):
        return sweep_list_for(self.request.user).select_related("created_by")

    def _detail(self, sweep: Sweep) -> dict[str, Any]:
        return s.SweepDetailSerializer(sweep, context={"state": sweep_state(sweep)}).data

    @extend_schema(summary="Your teams' sweeps (team=, status=, dataset=, template=, ordering=)")
    def list(self, request: Request) -> Response:
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        return self.get_paginated_response(s.SweepSerializer(page, many=True).data)

    @extend_schema(responses=s.SweepDetailSerializer, summary="A sweep: its phases, members, verdicts and winner")
    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(self._detail(get_sweep_for_user(request.user, int(pk))))

    @extend_schema(request=s.SweepCreateSerializer, responses={201: s.SweepDetailSerializer},
                   summary="Start a sweep: one of the seed's procedures (or an open search), checked as the New "
                           "sweep form checks it")
    def create(self, request: Request) -> Response:
        body = s.SweepCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        v, user = body.validated_data, request.user
        base_run = _found(access.get_run_for_user, user, v.get("base_run"), "base_run", "run")
        dataset = _found(access.get_dataset_for_user, user, v.get("dataset"), "dataset", "dataset")
        if dataset is None and base_run is None:
            raise bad_request({"dataset": "choose the dataset the members train on (or a base run)"})
        dataset = dataset or base_run.dataset
        try:
            sweep = sweep_services.sweep_create(
                team=dataset.team, user=user, template=v["template"], dataset=dataset, base_run=base_run,
                preset=_found(access.get_preset_for_user, user, v.get("preset"), "preset", "preset"),
                overrides=v["overrides"], params=v["params"], name=v.get("name") or "",
                queue=v.get("queue") or None, auto_advance=v["auto_advance"], early_stop=v["early_stop"],
                prune=v["prune"], confirm_top=v["confirm_top"],
                eval_suite=_found(get_suite_for_user, user, v.get("eval_suite"), "eval_suite", "eval suite"),
                eval_figure=v["eval_figure"].strip())
        except ValidationError as exc:
            raise _renamed(exc, {"start_from": "base_run"}) from None
        return Response(self._detail(sweep), status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=s.SweepDetailSerializer,
                   summary="Stop the sweep and every member that has not ended")
    @action(detail=True, methods=["post"])
    def stop(self, request: Request, pk: str) -> Response:
        sweep = get_sweep_for_user(request.user, int(pk))
        sweep_services.sweep_stop(sweep=sweep, user=request.user)
        return Response(self._detail(sweep))

    @extend_schema(request=s.SweepResumeSerializer, responses=s.SweepDetailSerializer,
                   summary="Resume after a worker died or a stop: lost and stopped members carry on")
    @action(detail=True, methods=["post"])
    def resume(self, request: Request, pk: str) -> Response:
        sweep = get_sweep_for_user(request.user, int(pk))
        body = s.SweepResumeSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        sweep = sweep_services.sweep_resume(sweep=sweep, user=request.user,
                                            queue=body.validated_data.get("queue") or None)
        return Response(self._detail(sweep))


# Workers ---------------------------------------------------------------------------------------------------------

class WorkerView(APIView):
    @extend_schema(responses=s.WorkerSerializer(many=True),
                   summary="Every worker: heartbeat, GPUs, slots and the runs of your teams it trains")
    def get(self, request: Request) -> Response:
        team_ids = set(access.team_ids_for(request.user))
        out = []
        for w in selectors.worker_list():
            runs = sorted(w.current_runs.all(), key=lambda run: run.id)
            out.append({"name": w.name, "hostname": w.hostname, "pid": w.pid, "queues": w.queues, "gpus": w.gpus,
                        "slots": w.slots, "alive": not w.is_silent, "started_at": w.started_at,
                        "last_heartbeat_at": w.last_heartbeat_at,
                        "runs": [{"id": r.id, "name": r.name} for r in runs if r.team_id in team_ids],
                        "hidden_runs": sum(r.team_id not in team_ids for r in runs), "busy": len(runs)})
        return Response(s.WorkerSerializer(out, many=True).data)


class NotFoundView(APIView):
    """Any other path under /api/: a JSON 404 naming the base URL (and the path with its slash, if that exists)."""

    permission_classes: list = []
    authentication_classes: list = []

    @extend_schema(exclude=True)
    def get(self, request: Request, path: str = "") -> Response:
        hint = ""
        if not request.path.endswith("/"):
            try:
                resolve(request.path + "/")
                hint = f"; did you mean {request.path}/ (every endpoint ends with a slash)?"
            except Resolver404:
                pass
        return Response({"detail": f"no such endpoint: {request.path}{hint} The API is under /api/v1/; its "
                                   "documentation is at /api/docs/"}, status=status.HTTP_404_NOT_FOUND)

    post = put = patch = delete = get

