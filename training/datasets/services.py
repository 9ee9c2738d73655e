"""Every write to a dataset: upload, register a path in place, and the token statistics task's progress."""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from celery import current_app
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from dashboard.models import Membership, Team
from training.access import require_role
from training.datasets import files
from training.datasets import stats as token_stats
from training.datasets.files import sha256_of
from training.engine.chat import template_rules
from training.engine.config import text_problem
from training.model_source import model_source_error
from training.models import Dataset
from training.run_config import model_errors, model_policy

log = logging.getLogger(__name__)
Role = Membership.Role


def _check_dataset_name(team: Team, name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise ValidationError({"name": "give the dataset a name"})
    if len(name) > 200:
        raise ValidationError({"name": "at most 200 characters"})
    if problem := text_problem(name):
        raise ValidationError({"name": problem})
    if Dataset.objects.filter(team=team, name=name).exists():
        raise ValidationError({"name": f"team {team.name} already has a dataset called {name!r}"})
    return name


class DatasetFileError(ValidationError):
    """A dataset file refused: messages keyed by form field ("file" for row errors, "format" or "column_<role>" for
    the mapping), and the file's columns so the page can offer a mapping."""

    def __init__(self, error: files.DatasetError):
        messages: dict[str, list[str]] = {}
        for item in error.errors:
            key = "file"
            if item.row is None and item.field == "format":
                key = "format"
            elif item.row is None and item.field in MAPPING_ROLES:
                key = f"column_{item.field}"
            messages.setdefault(key, []).append(str(item))
        if error.more:
            messages.setdefault("file", []).append(f"and {error.more} more rows with problems")
        super().__init__(messages)
        self.columns = error.columns


MAPPING_ROLES = sorted({role for roles in files.ROLES.values() for role in roles})


def _store_normalised(*, source: IO[bytes], kind: str, mapping: files.Mapping | None,
                      folder: Path) -> tuple[files.Checked, Path, str]:
    """Check every row of `source` and write the engine's JSONL under `folder`, named by its checksum."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix="normalised-", suffix=".jsonl", delete=False) as out:
        out_path = Path(out.name)
        try:
            checked = files.check_and_normalise(source, kind, out, mapping)
        except files.DatasetError as exc:
            out.close()
            out_path.unlink(missing_ok=True)
            raise DatasetFileError(exc) from None
        except BaseException:
            out.close()
            out_path.unlink(missing_ok=True)
            raise
    sha = sha256_of(out_path)
    final = folder / f"{sha}.jsonl"
    os.replace(out_path, final)  # same content, same name: an identical earlier dataset is simply reused
    return checked, final, sha


def upload_store(*, file: IO[bytes], filename: str, mapping: files.Mapping | None,
                 folder: Path) -> tuple[files.Checked, Path, str, str, int]:
    """Receive an upload (within TUNEBOARD_DATASET_MAX_BYTES), check every row and store it normalised under
    `folder`: (checked, path, sha256, file kind, bytes received). Datasets and eval suites are uploaded alike."""
    try:
        kind = files.file_kind(filename)
    except files.DatasetError as exc:
        raise DatasetFileError(exc) from None
    folder.mkdir(parents=True, exist_ok=True)
    size = 0
    limit = settings.TUNEBOARD_DATASET_MAX_BYTES
    with tempfile.TemporaryFile(dir=folder, prefix="upload-") as tmp:
        chunks = file.chunks() if hasattr(file, "chunks") else iter(lambda: file.read(1 << 20), b"")
        for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise ValidationError({"file": f"larger than the {limit} byte limit (TUNEBOARD_DATASET_MAX_BYTES)"})
            tmp.write(chunk)
        if size == 0:
            raise ValidationError({"file": "the file is empty; it needs at least one row"})
        tmp.seek(0)
        checked, final, sha = _store_normalised(source=tmp, kind=kind, mapping=mapping, folder=folder)
    return checked, final, sha, kind, size


def _source_stats(checked: files.Checked, *, filename: str, kind: str, size: int,
                  normalised: bool = True) -> dict[str, Any]:
    return {"source": {"file": filename, "kind": kind, "bytes": size, "format": checked.mapping.format,
                       "columns": checked.columns, "mapping": checked.mapping.columns, "normalised": normalised}}


def dataset_create_from_upload(*, team: Team, user, name: str, file: IO[bytes], filename: str | None = None,
                               mapping: files.Mapping | None = None) -> Dataset:
    """Check an uploaded JSONL/JSON/CSV/Parquet file row by row and store it normalised to the engine's JSONL.
    Nothing is saved, and no file is left, when a row is bad; `mapping` names the columns when detection cannot."""
    require_role(user=user, team=team, role=Role.MEMBER, action="Adding a dataset")
    name = _check_dataset_name(team, name)
    filename = filename or getattr(file, "name", None) or "upload.jsonl"
    checked, final, sha, kind, size = upload_store(file=file, filename=filename, mapping=mapping,
                                                   folder=settings.DATASETS_DIR / str(team.id))
    try:
        return Dataset.objects.create(team=team, name=name, path=str(final), source=Dataset.Source.UPLOAD,
                                      format=checked.format, rows=checked.rows, size_bytes=final.stat().st_size,
                                      sha256=sha, stats=_source_stats(checked, filename=Path(filename).name,
                                                                      kind=kind, size=size), created_by=user)
    except BaseException:
        if not Dataset.objects.filter(path=str(final)).exists():
            final.unlink(missing_ok=True)
        raise


def dataset_register(*, team: Team, user, name: str, path: str, mapping: files.Mapping | None = None) -> Dataset:
    """Record a file already on the shared storage (inside TUNEBOARD_DATASET_ROOTS). A JSONL/JSON/Parquet/CSV file
    the engine reads as it is stays where it is; one that needs its columns mapped is stored normalised."""
    require_role(user=user, team=team, role=Role.ADMIN, action="Registering a dataset path")
    name = _check_dataset_name(team, name)
    file = Path(path or "")
    roots = [Path(root).resolve() for root in settings.TUNEBOARD_DATASET_ROOTS]
    allowed = f"must be inside one of {', '.join(map(str, roots))} (TUNEBOARD_DATASET_ROOTS)"
    if not file.is_absolute():
        raise ValidationError({"path": f"give an absolute path; it {allowed}"})
    # resolve() follows symlinks and "..", so a link or a climb out of a root lands outside it and is refused.
    file = file.resolve()
    if not any(file.is_relative_to(root) for root in roots):
        raise ValidationError({"path": allowed})
    if not file.is_file():
        raise ValidationError({"path": f"{file} is not a file"})
    try:
        kind = files.file_kind(file.name)
    except files.DatasetError as exc:
        raise ValidationError({"path": str(exc.errors[0])}) from None
    with file.open("rb") as fh:
        checked, normalised, sha = _store_normalised(source=fh, kind=kind, mapping=mapping,
                                                     folder=settings.DATASETS_DIR / str(team.id))
    as_is = (checked.mapping.columns == {r: r for r in checked.mapping.columns} and checked.format
             == checked.mapping.format and not (kind == "csv" and checked.format == "messages"))
    if as_is:
        if not Dataset.objects.filter(path=str(normalised)).exists():
            normalised.unlink(missing_ok=True)
        stored, sha = file, sha256_of(file)
    else:
        stored = normalised
    return Dataset.objects.create(team=team, name=name, path=str(stored), source=Dataset.Source.REGISTERED,
                                  format=checked.format, rows=checked.rows, size_bytes=stored.stat().st_size,
                                  sha256=sha, stats=_source_stats(checked, filename=str(file), kind=kind,
                                                                  size=file.stat().st_size, normalised=not as_is),
                                  created_by=user)


PROFILE_PREVIEW_ROWS = 3


PROFILE_PREVIEW_TOKENS = 400


PROFILE_SAVE_EVERY_S = 0.5


def dataset_profile_start(*, dataset: Dataset, user, model: str, max_length: int, batch_size: int = 8,
                          eval_ratio: float | None = None, seed: int = 3407, eval_dataset: Dataset | None = None,
                          completion_only_loss: bool = True) -> dict[str, Any]:
    """Queue the token statistics of `dataset` with `model`'s tokenizer on the CPU queue; a new request replaces
    the one in progress (its task sees another token and stops)."""
    require_role(user=user, team=dataset.team, role=Role.MEMBER, action="Profiling a dataset")
    errors = {}
    model = (model or "").strip()
    if not model:
        errors["model"] = "give the model's folder (or name) whose tokenizer the run will use"
    errors.update(model_errors(model))
    if not 16 <= max_length <= 262144:
        errors["max_length"] = "between 16 and 262144, like the run's max_length"
    if not 1 <= batch_size <= 4096:
        errors["batch_size"] = "between 1 and 4096 sequences"
    if eval_ratio is not None and not 0 < eval_ratio < 1:
        errors["eval_ratio"] = "a share between 0 and 1 (exclusive), e.g. 0.05; or leave it blank"
    if eval_dataset is not None and eval_ratio is not None:
        errors["eval_dataset"] = "give a ratio or a separate eval dataset, not both"
    if eval_dataset is not None and eval_dataset.team_id != dataset.team_id:
        errors["eval_dataset"] = "no such dataset in this team"
    if errors:
        raise ValidationError(errors)
    profile = {"state": "queued", "token": os.urandom(8).hex(), "done": 0, "total": dataset.rows,
               "params": {"model": model, "max_length": max_length, "batch_size": batch_size,
                          "eval_ratio": eval_ratio, "seed": seed, "completion_only_loss": completion_only_loss,
                          "eval_dataset": eval_dataset.id if eval_dataset else None}}
    with transaction.atomic():
        locked = Dataset.objects.select_for_update().get(id=dataset.id)
        Dataset.objects.filter(id=dataset.id).update(stats={**locked.stats, "profile": profile})
        transaction.on_commit(lambda: _enqueue_profile(dataset.id, profile["token"]))
    return profile


def _enqueue_profile(dataset_id: int, token: str) -> None:
    try:
        # By the task's name (training/tasks.py): the tasks import the services, not the other way round.
        current_app.send_task("training.dataset_profile", args=[dataset_id, token], queue=settings.TUNEBOARD_CPU_QUEUE)
    except Exception as exc:  # noqa: BLE001 - an unreachable broker must not leave the page waiting forever
        log.exception("profile of dataset %s could not be queued", dataset_id)
        _profile_update(dataset_id, token, state="failed", error=f"the task queue (Redis) did not take it: {exc}")


def _profile_update(dataset_id: int, token: str, **fields: Any) -> bool:
    """Merge `fields` into the dataset's profile if it is still the one with `token`; False once replaced."""
    with transaction.atomic():
        dataset = Dataset.objects.select_for_update().filter(id=dataset_id).first()
        if dataset is None or dataset.stats.get("profile", {}).get("token") != token:
            return False
        stats = {**dataset.stats, "profile": {**dataset.stats["profile"], **fields}}
        Dataset.objects.filter(id=dataset_id).update(stats=stats)
    return True


class ProfileReplaced(Exception):
    """A newer profile request took over; this one stops."""


def _dataset_rows(dataset: Dataset):
    source = dataset.stats.get("source", {})
    kind = files.file_kind(dataset.path)
    with open(dataset.path, "rb") as fh:
        # Tuneboard's own normalised copies are already in the engine's format.
        if source.get("normalised", dataset.source == Dataset.Source.UPLOAD):
            for line in fh:
                yield json.loads(line)
            return
        mapping = files.Mapping(source.get("format", dataset.format), source.get("mapping") or {})
        yield from files.normalised_rows(fh, kind, mapping)


def _preview(rows: list[dict], encode, tokenizer) -> list[dict]:
    special = set(tokenizer.all_special_ids)
    out = []
    for row, encoded in zip(rows, encode(rows) if rows else []):
        ids = encoded.ids[:PROFILE_PREVIEW_TOKENS]
        out.append({"tokens": [[tokenizer.decode([i]), int(m), i in special]
                               for i, m in zip(ids, encoded.loss_mask)],
                    "total": len(encoded.ids)})
    return out


def dataset_profile_execute(*, dataset_id: int, token: str) -> None:
    """Tokenise every row with the requested model's tokenizer and save the statistics on the dataset; progress is
    saved as it goes. Every outcome ends in state done or failed, with the error."""
    from transformers import AutoTokenizer


    if not _profile_update(dataset_id, token, state="running", started_at=timezone.now().isoformat()):
        return
    try:
        dataset = Dataset.objects.get(id=dataset_id)
        params = dataset.stats["profile"]["params"]
        refused = model_source_error(params["model"], model_policy())  # again, on this worker's real paths
        if refused:
            raise ValueError(f"model: {refused}")
        try:
            tokenizer = AutoTokenizer.from_pretrained(params["model"])
        except Exception as exc:  # noqa: BLE001 - any loading error is the user's to read
            raise ValueError(f"model: could not load a tokenizer from {params['model']!r} ({exc})") from None
        encode = token_stats.tokenizer_encoder(tokenizer, completion_only_loss=params["completion_only_loss"])
        first: list[dict] = []
        saved_at = time.monotonic()

        def progress(done: int) -> None:
            nonlocal saved_at
            if time.monotonic() - saved_at >= PROFILE_SAVE_EVERY_S:
                saved_at = time.monotonic()
                if not _profile_update(dataset_id, token, done=done):
                    raise ProfileReplaced

        def rows():
            for row in _dataset_rows(dataset):
                if len(first) < PROFILE_PREVIEW_ROWS:
                    first.append(row)
                yield row

        eval_rows = None
        if params["eval_dataset"]:
            eval_rows = _dataset_rows(Dataset.objects.get(id=params["eval_dataset"], team_id=dataset.team_id))
        result = token_stats.profile(rows(), encode, total_rows=dataset.rows, max_length=params["max_length"],
                                       batch_size=params["batch_size"], eval_ratio=params["eval_ratio"],
                                       seed=params["seed"], eval_rows=eval_rows, progress=progress)
        result["preview"] = _preview(first, encode, tokenizer)
        result["chat_template"] = bool(getattr(tokenizer, "chat_template", None))
        if dataset.format == "messages" and result["chat_template"]:
            result["template"]["injected"] = template_rules(tokenizer).injected
        _profile_update(dataset_id, token, state="done", done=dataset.rows, result=result,
                        finished_at=timezone.now().isoformat())
    except ProfileReplaced:
        return
    except Exception as exc:  # noqa: BLE001 - the one wrapper that owns failure: the page shows the error
        log.exception("profile of dataset %s failed", dataset_id)
        _profile_update(dataset_id, token, state="failed", error=str(exc) or repr(exc),
                        finished_at=timezone.now().isoformat())
