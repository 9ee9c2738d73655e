"""Where a run's model may come from: a hub id, or a folder inside the deployment's model roots; never a run's
folder, a dataset's or another team's storage, whatever the roots say. Pure: the caller hands over the roots."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from training.engine.config import text_problem

# A hub id as the hub spells one: a name, or owner/name; letters, digits, "_", "." and "-", no ".." or "--".
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


@dataclass(frozen=True)
class ModelPolicy:
    """The deployment's rule: `roots` hold the model folders; `forbidden` maps a folder that is never a model
    source (the runs, the datasets, the registered dataset roots) to what it is; `hub` says whether hub ids are
    allowed (False on an offline cluster)."""

    roots: tuple[Path, ...]
    forbidden: tuple[tuple[Path, str], ...]
    hub: bool = True

    @classmethod
    def of(cls, *, roots, forbidden: dict[str, str], hub: bool) -> "ModelPolicy":
        return cls(roots=tuple(Path(r).resolve() for r in roots),
                   forbidden=tuple((Path(p).resolve(), what) for p, what in forbidden.items()), hub=hub)

    @property
    def roots_text(self) -> str:
        return ", ".join(map(str, self.roots)) or "(none configured)"


def model_source_error(model: str, policy: ModelPolicy) -> str | None:
    """Why `model` may not be trained here, or None when it may. A path is judged by where it really leads:
    ".." and symbolic links are resolved first, so a link or a climb out of a root is refused."""
    model = (model or "").strip()
    if not model:
        return None  # the engine says "Field required"
    problem = text_problem(model)
    if problem:  # a NUL byte would otherwise reach the OS's path calls below
        return problem
    folder_rule = f"a model folder must be inside one of {policy.roots_text} (TUNEBOARD_MODEL_ROOTS)"
    looks_like_path = model.startswith(("/", ".", "~")) or "\\" in model or model.count("/") > 1
    if not looks_like_path:
        if not HUB_ID.match(model) or ".." in model or "--" in model:
            return (f"{model!r} is neither a hub id (owner/name: letters, digits, _ . -) nor an absolute folder; "
                    f"{folder_rule}")
        if not policy.hub:
            return (f"{model!r} is a hub id, and the model hub is off in this deployment (TUNEBOARD_HUB_OFFLINE); "
                    f"{folder_rule}")
        return None
    path = Path(model)
    if not path.is_absolute():
        return f"give an absolute folder, not the relative {model!r}, or a hub id (owner/name); {folder_rule}"
    real = path.resolve()
    for folder, what in policy.forbidden:
        if real == folder or real.is_relative_to(folder):
            return (f"{model} is inside {what} ({folder}), which is never a model source; to build on an earlier "
                    f"run of your team, choose it under 'Start from'; {folder_rule}")
    if not any(real == root or real.is_relative_to(root) for root in policy.roots):
        shown = f"{model} (really {real})" if str(real) != model else model
        return f"{shown} is outside the model roots; {folder_rule}, or give a hub id (owner/name)"
    return None


# How deep below a root a model folder may sit (root/name or root/owner/name), and how many the picker lists.
FOLDER_DEPTH = 2
FOLDER_LIMIT = 200


def model_folders(policy: ModelPolicy) -> list[str]:
    """The model folders the roots hold (a folder with a config.json, at most FOLDER_DEPTH below a root), each one
    the rule allows: a root that overlaps the runs' or the datasets' folders never lists what is inside them."""
    found: list[str] = []
    for root in policy.roots:
        level = [root]
        for _ in range(FOLDER_DEPTH):
            level = sorted(child for folder in level if folder.is_dir() for child in _subfolders(folder))
            found += [str(folder) for folder in level if (folder / "config.json").is_file()]
    allowed = [folder for folder in dict.fromkeys(found) if model_source_error(folder, policy) is None]
    return sorted(allowed)[:FOLDER_LIMIT]


def _subfolders(folder: Path) -> list[Path]:
    try:
        return [child for child in folder.iterdir() if child.is_dir() and not child.name.startswith(".")]
    except OSError:  # unreadable: it holds nothing the worker could load either
        return []


@dataclass(frozen=True)
class ModelChoices:
    """What the run form's model picker offers: the roots' folders, the team's recent models the rule still allows
    (not already among the folders), and whether a hub id may be typed."""

    folders: tuple[str, ...]
    recent: tuple[str, ...]
    hub: bool
    roots: tuple[Path, ...] = ()

    @property
    def values(self) -> frozenset[str]:
        return frozenset(self.folders) | frozenset(self.recent)

    def folder_label(self, folder: str) -> str:
        """A folder as the picker names it: its path under its root first ("org/llama-1b  in /models")."""
        path = Path(folder)
        root = next((r for r in self.roots if path.is_relative_to(r)), None)
        return f"{path.relative_to(root)}  in {root}" if root is not None and path != root else folder


def model_choices(policy: ModelPolicy, recent: list[str]) -> ModelChoices:
    """The picker's lists; `recent` is the team's models, newest first, as its runs named them. One a run built on
    another's merged model names (a run folder) is dropped like any model the rule refuses."""
    folders = model_folders(policy)
    kept = [m for m in dict.fromkeys(m.strip() for m in recent if m and m.strip())
            if m not in folders and model_source_error(m, policy) is None]
    return ModelChoices(folders=tuple(folders), recent=tuple(kept), hub=policy.hub, roots=policy.roots)
