"""URLs of the training pages."""
from django.urls import path

from training.compare import views as compare_views
from training.datasets import views as dataset_views
from training.evaluation import compare as evaluation_compare
from training.evaluation import views as evaluation_views
from training.export import views as export_views
from training.playground import views as playground_views
from training.runs import views
from training.sweeps import views as sweep_views
from training.trackers import views as tracker_views
from training.workers import views as worker_views

urlpatterns = [
    path("", views.home, name="home"),
    path("runs/", views.run_list, name="run_list"),
    path("runs/new/", views.run_new, name="run_new"),
    path("runs/new/preflight/", views.run_preflight, name="run_preflight"),
    path("runs/<int:run_id>/", views.run_detail, name="run_detail"),
    path("runs/<int:run_id>/stop/", views.run_stop, name="run_stop"),
    path("runs/<int:run_id>/save-preset/", views.run_save_preset, name="run_save_preset"),
    path("runs/<int:run_id>/resume/", views.run_resume, name="run_resume"),
    path("runs/<int:run_id>/label/", views.run_label, name="run_label"),
    path("runs/<int:run_id>/evaluate/", evaluation_views.run_evaluate, name="run_evaluate"),
    path("runs/<int:run_id>/evaluations.json", evaluation_views.run_evaluations, name="run_evaluations"),
    path("runs/<int:run_id>/drift-check/", evaluation_views.run_drift_check, name="run_drift_check"),
    path("runs/<int:run_id>/export/", export_views.run_export, name="run_export"),
    path("runs/<int:run_id>/exports.json", export_views.run_exports, name="run_exports"),
    path("exports/<int:export_id>/files/<str:name>", export_views.export_file, name="export_file"),
    path("runs/<int:run_id>/playground/", playground_views.run_playground, name="run_playground"),
    path("runs/<int:run_id>/playground/<int:session_id>/release/", playground_views.playground_release,
         name="playground_release"),
    path("runs/<int:run_id>/playground/<int:session_id>/again/", playground_views.playground_again,
         name="playground_again"),
    path("runs/<int:run_id>/adapter/", views.run_adapter_list, name="run_adapter_list"),
    path("runs/<int:run_id>/adapter/<str:name>", views.run_adapter_file, name="run_adapter_file"),
    path("runs/<int:run_id>/tensorboard.zip", tracker_views.run_tensorboard_zip, name="run_tensorboard_zip"),
    path("trackers/", tracker_views.tracker_settings, name="tracker_settings"),
    path("trackers/<slug:slug>/", tracker_views.team_trackers, name="team_trackers"),
    path("sweeps/", sweep_views.sweep_list, name="sweep_list"),
    path("sweeps/new/", sweep_views.sweep_new, name="sweep_new"),
    path("sweeps/new/preview/", sweep_views.sweep_preview, name="sweep_preview"),
    path("sweeps/<int:sweep_id>/", sweep_views.sweep_detail, name="sweep_detail"),
    path("sweeps/<int:sweep_id>/stop/", sweep_views.sweep_stop, name="sweep_stop"),
    path("sweeps/<int:sweep_id>/resume/", sweep_views.sweep_resume, name="sweep_resume"),
    path("sweeps/<int:sweep_id>/confirm/", sweep_views.sweep_confirm, name="sweep_confirm"),
    path("sweeps/<int:sweep_id>/apply/", sweep_views.sweep_apply, name="sweep_apply"),
    path("sweeps/<int:sweep_id>/points/", sweep_views.sweep_points, name="sweep_points"),
    path("datasets/", dataset_views.dataset_list, name="dataset_list"),
    path("datasets/<int:dataset_id>/", dataset_views.dataset_detail, name="dataset_detail"),
    path("datasets/<int:dataset_id>/profile.json", dataset_views.dataset_profile_status, name="dataset_profile_status"),
    path("evaluation/suites/", evaluation_views.suite_list, name="suite_list"),
    path("evaluation/suites/<int:suite_id>/", evaluation_views.suite_detail, name="suite_detail"),
    path("evaluation/loftq/", evaluation_views.loftq_checks, name="loftq_checks"),
    path("workers/", worker_views.worker_list, name="worker_list"),
    path("compare/", compare_views.compare_page, name="compare"),
    path("compare/data/", compare_views.compare_data, name="compare_data"),
    path("compare/outputs/", evaluation_compare.compare_outputs, name="compare_outputs"),
    path("compare/export.csv", compare_views.compare_export, {"fmt": "csv"}, name="compare_export_csv"),
    path("compare/export.json", compare_views.compare_export, {"fmt": "json"}, name="compare_export_json"),
]
