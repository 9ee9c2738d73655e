"""Live symptom detection for one run on the worker: a detectors.Watcher fed every event, new findings saved and sent."""
from __future__ import annotations

import logging
from typing import Any, Iterable

import numpy as np
from django.conf import settings
from django.db import IntegrityError

from guidance import detectors
from guidance.models import Finding
from training import selectors
from training.engine.events import json_safe
from training.live import send as live
from training.models import MetricPoint, Run, RunEvent
from training.selectors import finding_dict

log = logging.getLogger(__name__)

# Comparable runs whose loss floor sets peer_best_loss: the latest few only, so a run's start stays cheap.
PEER_RUNS = 10


def _loss_floor(losses: np.ndarray, window: int) -> float | None:
    """detectors.loss_floor with numpy: the lowest running median (a 100k-step run in milliseconds, not seconds)."""
    values = losses[np.isfinite(losses)]
    if not len(values):
        return None
    if len(values) <= window:
        return float(np.median(values))
    return float(np.median(np.lib.stride_tricks.sliding_window_view(values, window), axis=1).min())


def peer_best_loss(run: Run, thresholds: detectors.Thresholds) -> float | None:
    """The best loss floor among the team's latest succeeded runs on the same dataset and model."""
    peers = (Run.objects.filter(team_id=run.team_id, dataset_id=run.dataset_id, status=Run.Status.SUCCEEDED,
                                config__model=(run.config or {}).get("model"))
             .exclude(id=run.id).order_by("-id").values_list("id", flat=True)[:PEER_RUNS])
    floors = []
    for peer in peers:
        losses = np.array(MetricPoint.objects.filter(run_id=peer, loss__isnull=False).order_by("step")
                          .values_list("loss", flat=True), dtype=float)
        floor = _loss_floor(losses, thresholds.window)
        if floor is not None:
            floors.append(floor)
    return min(floors) if floors else None


def _events_from_points(points: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    for point in points:
        if point["loss"] is not None:
            yield {"type": "metrics", **point}
        if point["eval_loss"] is not None:
            yield {"type": "eval", "step": point["step"], "eval_loss": point["eval_loss"]}


class RunWatcher:
    """Feeds a run's events to a detectors.Watcher; saves each new Finding and sends it to the run's group.

    On resume the watcher is seeded with the curve the run continues (the earlier runs' points up to the checkpoint,
    as the run page draws it), so a stall or overfit is judged over the whole run; what that history already showed
    belongs to the earlier run and is not reported again.
    """

    def __init__(self, run: Run):
        self.run = run
        thresholds = detectors.Thresholds.from_dict(settings.TUNEBOARD_DETECTOR_THRESHOLDS)
        try:
            peer = peer_best_loss(run, thresholds)
        except Exception:  # noqa: BLE001 - without peers the plateau detector is silent; the run goes on
            log.exception("run %s: peer loss not computed", run.id)
            peer = None
        # The packed-throughput estimate comes from the run's own padding share (its metrics events).
        # The config from the start: a run that fails before its started event is still judged against it.
        self.watcher = detectors.Watcher(thresholds, peer_best_loss=peer, config=run.config)
        if run.resumed_from_id and run.resumed_from_step:
            try:
                started = RunEvent.objects.filter(run_id=run.resumed_from_id, type="started").order_by("seq").first()
                # The run's own curve before the step it resumed from: the earlier runs' parts, read only so far.
                history = [p for chunk in selectors.run_point_chunks(run, before_step=run.resumed_from_step + 1)
                           for p in chunk]
                # The earlier run's config and warmup first, so its points are judged as they were then.
                self.watcher.feed_many([*([{"type": "started", **started.data}] if started else []),
                                        *_events_from_points(history)])
            except Exception:  # noqa: BLE001 - a fresh watcher still judges the points to come
                log.exception("run %s: watcher not seeded with the run it resumes", run.id)

    def feed(self, event: dict[str, Any]) -> list[Finding]:
        saved = []
        for found in self.watcher.feed(event):
            finding = self._save(found)
            if finding is not None:
                saved.append(finding)
                live.send_run_message(self.run.id, "finding", finding_dict(finding))
        if saved:
            live.send_run_row(self.run)  # the run lists' findings count
        return saved

    def _save(self, found: detectors.Finding) -> Finding | None:
        try:
            finding, created = Finding.objects.get_or_create(
                run_id=self.run.id, code=found.code, step=found.step,
                defaults={"severity": found.severity, "title": found.title[:200], "message": found.message,
                          "evidence": json_safe(found.evidence), "parameters": list(found.parameters)})
        except IntegrityError:  # the same finding saved by a re-delivered task between the get and the create
            return None
        return finding if created else None
