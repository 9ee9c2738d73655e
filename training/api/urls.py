"""The API's URLs: /api/v1/ (the endpoints), /api/v1/schema/ (OpenAPI 3), /api/docs/ (Swagger UI, served by the app
with no network); any other /api/ path is a JSON 404."""
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import SimpleRouter

from training.api import views

router = SimpleRouter()
router.register("datasets", views.DatasetViewSet, basename="dataset")
router.register("presets", views.PresetViewSet, basename="preset")
router.register("runs", views.RunViewSet, basename="run")
router.register("sweeps", views.SweepViewSet, basename="sweep")

app_name = "api"
urlpatterns = [
    path("v1/me/", views.MeView.as_view(), name="me"),
    path("v1/compare/", views.CompareView.as_view(), name="compare"),
    path("v1/compare/export/", views.CompareExportView.as_view(), name="compare-export"),
    path("v1/workers/", views.WorkerView.as_view(), name="workers"),
    # A file's name ends the path (no trailing slash), as on the run page's own download links.
    path("v1/runs/<int:pk>/adapter/<str:name>", views.RunViewSet.as_view({"get": "adapter_file"}),
         name="run-adapter-file"),
    path("v1/exports/<int:pk>/", views.ExportView.as_view(), name="export"),
    path("v1/exports/<int:pk>/files/<str:name>", views.ExportFileView.as_view(), name="export-file"),
    path("v1/", include(router.urls)),
    path("v1/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api:schema"), name="docs"),
    re_path(r"^(?P<path>.*)$", views.NotFoundView.as_view()),
]
