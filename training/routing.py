"""Websocket routes of the training app."""
from django.urls import path

from training.live.consumers import RunConsumer, RunListConsumer
from training.playground.consumers import PlaygroundConsumer
from training.sweeps.consumers import SweepConsumer

websocket_urlpatterns = [
    path("ws/runs/", RunListConsumer.as_asgi()),
    path("ws/runs/<int:run_id>/", RunConsumer.as_asgi()),
    path("ws/sweeps/<int:sweep_id>/", SweepConsumer.as_asgi()),
    path("ws/playground/<int:session_id>/", PlaygroundConsumer.as_asgi()),
]
