"""The OpenAI-compatible endpoints, mounted at /v1/ (dashboard/urls.py), where OpenAI's clients look for them."""
from django.urls import path

from training.openai_api import views

app_name = "openai"
urlpatterns = [
    path("chat/completions", views.chat_completions, name="chat-completions"),
    path("models", views.models, name="models"),
    path("models/<str:name>", views.models, name="model"),
    path("files", views.files, name="files"),
    path("files/<str:file_id>", views.file_detail, name="file"),
    path("fine_tuning/jobs", views.fine_tuning_jobs, name="jobs"),
    path("fine_tuning/jobs/<str:job_id>", views.fine_tuning_job, name="job"),
    path("fine_tuning/jobs/<str:job_id>/cancel", views.fine_tuning_job_cancel, name="job-cancel"),
    path("fine_tuning/jobs/<str:job_id>/events", views.fine_tuning_job_events, name="job-events"),
    path("fine_tuning/jobs/<str:job_id>/checkpoints", views.fine_tuning_job_checkpoints, name="job-checkpoints"),
]
