"""Loads, validates and renders the per-parameter guidance files in guidance/content/ (no Django needed)."""
from __future__ import annotations

import re
import types
import typing
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import markdown
import yaml
from markdown.extensions import Extension
from markdown.treeprocessors import Treeprocessor
from pydantic import ValidationError

from training.engine.config import TrainConfig

CONTENT_DIR = Path(__file__).resolve().parent / "content"

# The fifteen parameters of the seed, in the seed's order; each must have a file <param>.md.
GUIDED_PARAMS = (
    "dtype",
    "load_in_4bit",
    "r",
    "lora_alpha",
    "lora_dropout",
    "bias",
    "use_rslora",
    "loftq_config",
    "packing",
    "gradient_accumulation_steps",
    "warmup_steps",
    "learning_rate",
    "optim",
    "weight_decay",
    "lr_scheduler_type",
)

SECTIONS = (
    "Definition",
    "Impact and symptoms",
    "Simple default",
    "Detailed configuration",
    "Tuning process",
    "Sources",
)

GROUP_TITLES = {
    "model": "Loading the model",
    "lora": "The LoRA adapter",
    "sft": "The SFT trainer",
}

FRONT_MATTER_KEYS = ("param", "title", "group", "one_line", "default", "default_note", "predictions", "related")

SLUG_RE = re.compile(r"^[0-9a-z_]+$")

ONE_LINE_MAX = 200

# Which change directions a parameter's `predictions` must (and may) describe, by the kind of value it takes.
PREDICTION_KEYS = {
    "number": ({"up", "down"}, {"changed"}),
    "switch": ({"on", "off"}, set()),
    "optional": ({"on", "off", "changed"}, set()),
    "choice": ({"changed"}, set()),  # plus, optionally, one key per allowed value
}


class ContentError(Exception):
    """A guidance file that must not be served; the message names the file and what is wrong."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass(frozen=True)
class ParamGuidance:
    """One parameter's guidance: front matter plus the six sections, each as Markdown and rendered HTML.

    `sections` maps each section name to {"markdown", "html", "anchor"}; `anchors` maps every anchor id in
    the page (the six sections and their subheadings, in page order) to its heading text.
    """

    param: str
    title: str
    group: str
    one_line: str
    default: Any
    default_note: str
    predictions: dict[str, str]
    related: tuple[str, ...]
    sections: dict[str, dict[str, str]]
    anchors: dict[str, str]
    path: Path


def slugify(text: str, separator: str = "_") -> str:
    """Heading text to an anchor id matching SLUG_RE ("Too high" -> "too_high")."""
    return re.sub(r"[^0-9a-z]+", "_", text.lower()).strip("_")


SECTION_ANCHORS = {name: slugify(name) for name in SECTIONS}


def value_kind(param: str) -> str:
    """How a TrainConfig field changes: number (up/down), switch (on/off), optional (on/off/changed) or choice."""
    annotation = TrainConfig.model_fields[param].annotation
    if annotation is bool:
        return "switch"
    if typing.get_origin(annotation) is typing.Literal:
        return "choice"
    args = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ()
    if type(None) in args:
        return "optional"
    bases = {typing.get_args(a)[0] if typing.get_origin(a) is typing.Annotated else a for a in (args or (annotation,))}
    if bases <= {int, float}:
        return "number"
    raise ValueError(f"{param}: no change directions defined for {annotation}")


def choices(param: str) -> tuple[Any, ...]:
    """The allowed values of a choice field (empty for other kinds)."""
    annotation = TrainConfig.model_fields[param].annotation
    return typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal else ()


def _split_front_matter(path: Path, text: str) -> tuple[dict, str]:
    lines = text.split("\n")
    if not lines or lines[0].strip() != "---":
        raise ContentError(path, "no front matter: the file must start with a '---' line")
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
    except StopIteration:
        raise ContentError(path, "front matter is not closed by a '---' line") from None
    try:
        meta = yaml.safe_load("\n".join(lines[1:end]))
    except yaml.YAMLError as exc:
        raise ContentError(path, f"front matter is not valid YAML: {exc}") from None
    if not isinstance(meta, dict):
        raise ContentError(path, "front matter must be a mapping of keys to values")
    return meta, "\n".join(lines[end + 1:])


def _split_sections(path: Path, body: str) -> dict[str, str]:
    """The body's H2 sections, checked against SECTIONS: all present, in order, nothing else, none empty."""
    found: list[tuple[str, list[str]]] = []
    preamble: list[str] = []
    fence = None
    for line in body.split("\n"):
        stripped = line.strip()
        if stripped.startswith(("```", "~~~")):
            if fence is None:
                fence = stripped[:3]
            elif stripped[:3] == fence:
                fence = None
        elif fence is None:
            if re.match(r"^# ", line):
                raise ContentError(path, f"a top-level heading is not allowed ('{stripped}'); the title comes "
                                         "from the front matter")
            heading = re.match(r"^## +(.+?)\s*#*\s*$", line)
            if heading:
                found.append((heading.group(1), []))
                continue
        (found[-1][1] if found else preamble).append(line)
    if any(line.strip() for line in preamble):
        raise ContentError(path, "text before the first section; every line belongs under one of: "
                                 + ", ".join(SECTIONS))
    names = [name for name, _ in found]
    unknown = [name for name in names if name not in SECTIONS]
    if unknown:
        raise ContentError(path, f"unexpected section(s): {', '.join(unknown)}; allowed: {', '.join(SECTIONS)}")
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ContentError(path, f"section(s) given more than once: {', '.join(duplicated)}")
    missing = [name for name in SECTIONS if name not in names]
    if missing:
        raise ContentError(path, f"missing section(s): {', '.join(missing)}")
    if tuple(names) != SECTIONS:
        raise ContentError(path, f"sections out of order: found {', '.join(names)}; expected {', '.join(SECTIONS)}")
    sections = {name: "\n".join(lines).strip() for name, lines in found}
    empty = [name for name, text in sections.items() if not text]
    if empty:
        raise ContentError(path, f"empty section(s): {', '.join(empty)}")
    return sections


def _check_text(path: Path, meta: dict, key: str, *, one_line: bool = False) -> str:
    value = meta[key]
    if not isinstance(value, str) or not value.strip():
        raise ContentError(path, f"{key} must be a non-empty string")
    if one_line and ("\n" in value.strip() or len(value) > ONE_LINE_MAX):
        raise ContentError(path, f"{key} must be one line of at most {ONE_LINE_MAX} characters")
    return value.strip()


def _check_default(path: Path, param: str, default: Any) -> None:
    # Strict: the default must be exactly the value the engine takes (2e-4 written in YAML is a string, not a float).
    try:
        TrainConfig.model_validate({"model": "m", "train_file": "t", param: default}, strict=True)
    except ValidationError as exc:
        reasons = "; ".join(err["msg"] for err in exc.errors())
        raise ContentError(path, f"default {default!r} is not a value TrainConfig accepts for {param}: {reasons}") \
            from None


def _check_predictions(path: Path, param: str, predictions: Any) -> dict[str, str]:
    if not isinstance(predictions, dict):
        raise ContentError(path, "predictions must be a mapping of change direction to prediction")
    # YAML 1.1 reads bare on/off keys as booleans.
    normalised = {("on" if k else "off") if isinstance(k, bool) else str(k): v for k, v in predictions.items()}
    kind = value_kind(param)
    required, optional = PREDICTION_KEYS[kind]
    allowed = required | optional | {str(c) for c in choices(param)}
    missing = sorted(required - set(normalised))
    if missing:
        raise ContentError(path, f"predictions for {param} ({kind}) must cover: {', '.join(missing)}")
    unknown = sorted(set(normalised) - allowed)
    if unknown:
        raise ContentError(path, f"predictions has unknown key(s) {', '.join(unknown)}; allowed for {param}: "
                                 + ", ".join(sorted(allowed)))
    for key, text in normalised.items():
        if not isinstance(text, str) or not text.strip() or "\n" in text.strip():
            raise ContentError(path, f"prediction '{key}' must be a non-empty one-line string")
    return {key: text.strip() for key, text in normalised.items()}


class _HeadingIdProcessor(Treeprocessor):
    """Takes an explicit anchor from a heading ending in {#id}; set before toc so toc keeps it."""

    EXPLICIT_ID = re.compile(r"\s*\{#([^}\s]+)\}\s*$")

    def run(self, root):
        for el in (el for el in root.iter() if el.tag in ("h3", "h4", "h5", "h6")):
            holder, attr = (el[-1], "tail") if len(el) else (el, "text")
            match = self.EXPLICIT_ID.search(getattr(holder, attr) or "")
            if match:
                setattr(holder, attr, getattr(holder, attr)[: match.start()])
                el.set("id", match.group(1))


class _HeadingIds(Extension):
    # attr_list would do this too, but it also reads a trailing "{0.5, 1.0}" grid as attributes.
    def extendMarkdown(self, md):
        md.treeprocessors.register(_HeadingIdProcessor(md), "heading_ids", 8)


def _render(path: Path, sections: dict[str, str]) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    md = markdown.Markdown(
        extensions=[_HeadingIds(), "toc", "tables", "fenced_code", "sane_lists"],
        extension_configs={"toc": {"slugify": slugify}},
    )
    rendered: dict[str, dict[str, str]] = {}
    anchors: dict[str, str] = {}
    for name, text in sections.items():
        md.reset()
        html = md.convert(text)
        anchors[SECTION_ANCHORS[name]] = name
        stack = list(md.toc_tokens)
        while stack:
            token = stack.pop(0)
            if not SLUG_RE.match(token["id"]) or token["id"] in anchors:
                raise ContentError(path, f"heading '{token['name']}' gives anchor '{token['id']}', which is not a "
                                         "unique slug in this file; reword the heading")
            anchors[token["id"]] = token["name"]
            stack[:0] = token["children"]
        rendered[name] = {"markdown": text, "html": html, "anchor": SECTION_ANCHORS[name]}
    return rendered, anchors


def load_file(path: str | Path) -> ParamGuidance:
    """Parse and validate one guidance file; raise ContentError naming the file and the problem."""
    path = Path(path)
    if not SLUG_RE.match(path.stem):
        raise ContentError(path, f"file name '{path.name}' is not a slug matching {SLUG_RE.pattern} plus '.md'")
    meta, body = _split_front_matter(path, path.read_text(encoding="utf-8"))
    missing = [key for key in FRONT_MATTER_KEYS if key not in meta]
    if missing:
        raise ContentError(path, f"front matter is missing: {', '.join(missing)}")
    unknown = sorted(set(meta) - set(FRONT_MATTER_KEYS))
    if unknown:
        raise ContentError(path, f"front matter has unknown key(s): {', '.join(map(str, unknown))}; "
                                 f"allowed: {', '.join(FRONT_MATTER_KEYS)}")
    param = meta["param"]
    if not isinstance(param, str) or not SLUG_RE.match(param):
        raise ContentError(path, f"param {param!r} is not a slug matching {SLUG_RE.pattern}")
    if param not in TrainConfig.model_fields:
        raise ContentError(path, f"param '{param}' is not a TrainConfig field, so the engine does not accept it")
    if param != path.stem:
        raise ContentError(path, f"param '{param}' does not match the file name (expected {param}.md)")
    if meta["group"] not in GROUP_TITLES:
        raise ContentError(path, f"group {meta['group']!r} is not one of: {', '.join(GROUP_TITLES)}")
    _check_default(path, param, meta["default"])
    related = meta["related"]
    if not isinstance(related, list) or not all(isinstance(r, str) for r in related):
        raise ContentError(path, "related must be a list of parameter names")
    if param in related:
        raise ContentError(path, "related must not list the parameter itself")
    sections, anchors = _render(path, _split_sections(path, body))
    return ParamGuidance(
        param=param,
        title=_check_text(path, meta, "title", one_line=True),
        group=meta["group"],
        one_line=_check_text(path, meta, "one_line", one_line=True),
        default=meta["default"],
        default_note=_check_text(path, meta, "default_note", one_line=True),
        predictions=_check_predictions(path, param, meta["predictions"]),
        related=tuple(related),
        sections=sections,
        anchors=anchors,
        path=path,
    )


@lru_cache(maxsize=None)
def _load_dir(directory: str) -> dict[str, ParamGuidance]:
    root = Path(directory)
    if not root.is_dir():
        raise ContentError(root, "guidance content directory does not exist")
    loaded = {g.param: g for g in map(load_file, sorted(root.glob("*.md")))}
    missing = [p for p in GUIDED_PARAMS if p not in loaded]
    if missing:
        raise ContentError(root, "no guidance for: " + ", ".join(f"{p} (expected {p}.md)" for p in missing))
    for guidance in loaded.values():
        unknown = [r for r in guidance.related if r not in loaded]
        if unknown:
            raise ContentError(guidance.path, f"related names parameter(s) without guidance: {', '.join(unknown)}")
    order = {p: i for i, p in enumerate(GUIDED_PARAMS)}
    return dict(sorted(loaded.items(), key=lambda item: (order.get(item[0], len(order)), item[0])))


def load_all(path: str | Path | None = None) -> dict[str, ParamGuidance]:
    """Every parameter's guidance, validated and rendered once per directory (cached), in the seed's order."""
    return _load_dir(str(Path(path or CONTENT_DIR).resolve()))


def get(param: str) -> ParamGuidance:
    """The guidance for one parameter; KeyError if there is none."""
    try:
        return load_all()[param]
    except KeyError:
        raise KeyError(f"no guidance for {param!r}") from None
