"""Going on from a run: what "New run from this run" starts from, the change an Apply on a finding or a pre-flight
note makes, and a team preset saved from a run. The form, the API and the CLI all start from `run_start`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ValidationError

from dashboard.models import Membership
from guidance.models import Finding
from training import selectors
from training.access import require_role
from training.engine.config import ConfigError, parse_config
from training.models import Preset, Run
from training.run_config import PRESET_PLACEHOLDERS, RESERVED_FIELDS


@dataclass(frozen=True)
class RunStart:
    """A new run's start taken from `parent`: the same dataset, preset, "Start from", suites and trackers, and as
    overrides every config field whose value the preset (or the engine's default) would not give."""

    parent: Run
    overrides: dict[str, Any]
    base_fields: frozenset[str] = field(default_factory=frozenset)  # fixed by the run it builds on: left blank


@dataclass(frozen=True)
class Change:
    """What an Apply changes: the new values, and the sentence the form says it with at the top."""

    values: dict[str, Any]
    text: str


def _baseline(run: Run) -> dict[str, Any]:
    """The config the run's preset alone (over the engine's defaults) gives, in the run config's own JSON form."""
    preset = run.preset.config if run.preset else {}
    try:
        return parse_config({**PRESET_PLACEHOLDERS, **preset, "output_dir": "run"}).model_dump(mode="json")
    except ConfigError:  # a preset changed since into one that no longer validates: every field is an override
        return {}


def run_start(run: Run) -> RunStart:
    base_fields = frozenset(run.fields_for_builds(run.base_kind)) if run.base_run_id and run.base_kind else frozenset()
    baseline = _baseline(run)
    overrides = {}
    for name, value in (run.config or {}).items():
        if name in RESERVED_FIELDS or name in base_fields or name == "version":
            continue
        if name in baseline and baseline[name] == value and name != "model":
            continue
        if name == "model" and run.preset and run.preset.config.get("model") == value:
            continue
        overrides[name] = value
    return RunStart(parent=run, overrides=overrides, base_fields=base_fields)


def _transition(parent: Run, values: dict[str, Any], source: str) -> Change:
    return Change(values=values, text=f"{selectors.change_text(parent.config or {}, values)}, {source}")


def finding_change(finding: Finding) -> Change | None:
    """The change the finding names (guidance.changes), as run #N's Apply makes it; None where it names none."""
    values = selectors.finding_change(finding)
    if values is None:
        return None
    where = f"at step {finding.step}" if finding.step else "about the config"
    return _transition(finding.run, values, f"from the finding {where} ({finding.title})")


def note_change(run: Run, code: str) -> Change | None:
    """The fix of the run's pre-flight note `code` (as the review made it when the run was created)."""
    note = next((n for n in run.preflight or [] if n.get("code") == code), None)
    if note is None or not note.get("fix"):
        return None
    return _transition(run, dict(note["fix"]), f"from the note before it started ({note.get('title', code)})")


def run_change(run: Run, *, finding_id: Any = None, note: str = "") -> Change:
    """The change of one of `run`'s findings (by id) or pre-flight notes (by code); ValidationError names what is
    wrong with the ask (no such finding on this run, one that names no change)."""
    if finding_id not in (None, ""):
        found = (Finding.objects.select_related("run__dataset", "run__preset")
                 .filter(run=run, id=int(finding_id)).first() if str(finding_id).isdigit() else None)
        if found is None:
            raise ValidationError({"finding": f"run #{run.id} has no finding {finding_id!r}"})
        change = finding_change(found)
        if change is None:
            raise ValidationError({"finding": f"the finding {found.title!r} names no change to apply"})
        return change
    change = note_change(run, note)
    if change is None:
        raise ValidationError({"note": f"run #{run.id} has no pre-flight note {note!r} with a fix"})
    return change


def preset_from_run(*, run: Run, user, name: str) -> Preset:
    """A team preset of the run's config (every field but those Tuneboard sets: the dataset's file, the run's folder,
    a built-on adapter); team admins only, as presets are curated."""
    require_role(user=user, team=run.team, role=Membership.Role.ADMIN, action="Saving a team preset")
    name = (name or "").strip()[:200]
    if not name:
        raise ValidationError({"name": "give the preset a name"})
    if Preset.objects.filter(team=run.team, name=name).exists():
        raise ValidationError({"name": f"the team already has a preset named {name!r}; choose another name"})
    if run.base_run_id and run.base_kind == Run.BaseKind.MERGED:
        raise ValidationError({"run": f"run #{run.id} trained run #{run.base_run_id}'s merged model, a path inside "
                                      "the runs that a preset cannot name; save its base run's preset instead"})
    config = {k: v for k, v in (run.config or {}).items() if k not in RESERVED_FIELDS}
    preset = Preset(team=run.team, name=name, config=config, created_by=user,
                    notes=f"Saved from run #{run.id} ({run.name}).")
    preset.full_clean()
    preset.save()
    return preset
