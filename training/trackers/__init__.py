"""Trackers: a run's metrics, config and findings mirrored to TensorBoard event files and to the team's MLflow
server, from the worker, beside the training and never in its way."""
