"""The OpenAI-compatible endpoints, mounted at /v1/ (dashboard/urls.py), where OpenAI's clients look for them."""
from django.urls import path

from training.openai_api import views

app_name = "openai"
urlpatterns = [
    path("chat/completions", views.chat_completions, name="chat-completions"),
    path("models", views.models, name="models"),
    path("models/<str:name>", views.models, name="model"),
]
