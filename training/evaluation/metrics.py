"""Eval suite metrics: a score per example and the suite's figures. Pure: no Django, no model.

Generation metrics score each output against its reference: exact match, contains, normalised exact match, ROUGE-L
(Google's rouge-score package, with a Unicode tokenizer: its default drops every non-ASCII letter, so a Chinese or
accented answer would score 0). A label set makes it classification: the output's label is the first label it
starts with (after normalising), and the suite's figures are scikit-learn's accuracy, macro-F1 and the minority
class's precision, recall and F1 (lora_dropout's procedure: "watch minority-class recall/F1").
"""
from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

METRICS = {
    "exact_match": "the output equals the reference (surrounding whitespace ignored)",
    "contains": "the reference appears in the output (case-insensitive)",
    "normalized_exact_match": "equal after lowercasing and removing punctuation, articles and extra spaces",
    "rouge_l": "ROUGE-L F-measure of the output against the reference (0-1)",
    "classification": "the output's label (the first of the suite's labels it starts with) against the reference's",
    "lm_eval": "a task of EleutherAI's lm-evaluation-harness, from the suite's task YAML and data; its own metrics",
}
HARNESS = "lm_eval"  # scored by the harness itself (training/engine/harness.py), not here
# The figures of a suite a sweep can be judged on (all 0-1, higher is better); the first is the default. An
# lm-eval task's figures are its own metrics' names (acc, acc_norm, exact_match, ...), known once it ran.
FIGURES = {"exact_match": ("exact_match",), "contains": ("contains",),
           "normalized_exact_match": ("normalized_exact_match",), "rouge_l": ("rouge_l",),
           "classification": ("accuracy", "macro_f1", "minority_f1", "minority_recall", "minority_precision"),
           HARNESS: ("acc",)}
NO_LABEL = "(none)"  # an output that starts with none of the labels
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_WORDS = re.compile(r"\w+", re.UNICODE)


class MetricError(ValueError):
    """A metric the suite cannot use; the message names the field."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field, self.message = field_name, message


def normalize(text: str) -> str:
    """SQuAD's answer normalisation, Unicode-aware: NFKC, casefold, no punctuation, no English articles, one space."""
    text = unicodedata.normalize("NFKC", text or "").casefold()
    text = "".join(" " if unicodedata.category(c).startswith("P") or c in string.punctuation else c for c in text)
    return " ".join(_ARTICLES.sub(" ", text).split())


class _UnicodeTokenizer:
    """rouge-score's tokenizer interface over Unicode words (its default keeps only [a-z0-9])."""

    def tokenize(self, text: str) -> list[str]:
        return _WORDS.findall(unicodedata.normalize("NFKC", text or "").casefold())


def exact_match(output: str, reference: str) -> float:
    return float((output or "").strip() == (reference or "").strip())


def contains(output: str, reference: str) -> float:
    ref = (reference or "").strip().casefold()
    return float(bool(ref) and ref in (output or "").casefold())


def normalized_exact_match(output: str, reference: str) -> float:
    return float(normalize(output) == normalize(reference))


_scorer = None


def rouge_l(output: str, reference: str) -> float:
    global _scorer
    if _scorer is None:
        from rouge_score import rouge_scorer

        _scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_UnicodeTokenizer())
    if not _WORDS.search(output or "") and not _WORDS.search(reference or ""):
        return 1.0  # two empty texts agree; rouge-score says 0 for lack of tokens
    return float(_scorer.score(reference or "", output or "")["rougeL"].fmeasure)


def label_of(output: str, labels: Sequence[str]) -> str:
    """The label an output gives: the longest label its normalised text starts with ("not spam" before "not")."""
    text = normalize(output)
    for label in sorted(labels, key=lambda lab: -len(normalize(lab))):
        norm = normalize(label)
        if norm and (text == norm or text.startswith(norm + " ")):
            return label
    return NO_LABEL


PER_EXAMPLE = {"exact_match": exact_match, "contains": contains, "normalized_exact_match": normalized_exact_match,
               "rouge_l": rouge_l}


@dataclass(frozen=True)
class SuiteScore:
    metric: str
    figures: dict[str, float | int | str | None]  # the suite's headline figures, by name
    scores: list[float] = field(default_factory=list)  # one per example, 0-1
    predicted: list[str] | None = None  # classification: each output's label


def check_metric(metric: str, labels: Sequence[str] | None) -> None:
    if metric not in METRICS:
        raise MetricError("metric", f"unknown metric {metric!r}; allowed: {', '.join(METRICS)}")
    if metric == HARNESS and labels:
        raise MetricError("labels", "an lm-evaluation-harness task has its own targets; leave labels empty")
    if metric == "classification":
        if not labels or len(labels) < 2:
            raise MetricError("labels", "classification needs the label set: at least two labels")
        normalized = [normalize(lab) for lab in labels]
        if any(not n for n in normalized):
            raise MetricError("labels", "a label is empty once normalised (only punctuation or articles)")
        if len(set(normalized)) != len(normalized):
            raise MetricError("labels", "two labels are the same once normalised (case and punctuation ignored)")
    elif labels:
        raise MetricError("labels", f"labels are for the classification metric, not {metric}")


def score(metric: str, outputs: Sequence[str], references: Sequence[str], *,
          labels: Sequence[str] | None = None) -> SuiteScore:
    """Score every output against its reference with `metric`; MetricError naming the field on a bad metric."""
    check_metric(metric, labels)
    if len(outputs) != len(references):
        raise ValueError(f"{len(outputs)} outputs for {len(references)} references")
    if metric == "classification":
        return _classification(outputs, references, list(labels or ()))
    per = [PER_EXAMPLE[metric](o, r) for o, r in zip(outputs, references)]
    return SuiteScore(metric, {metric: sum(per) / len(per) if per else None, "examples": len(per)}, per)


def _classification(outputs: Sequence[str], references: Sequence[str], labels: list[str]) -> SuiteScore:
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    truth = [label_of(r, labels) for r in references]
    unknown = sorted({r for r, t in zip(references, truth) if t == NO_LABEL})
    if unknown:
        raise MetricError("labels", f"references not in the label set: {', '.join(map(repr, unknown[:5]))}")
    predicted = [label_of(o, labels) for o in outputs]
    per = [float(p == t) for p, t in zip(predicted, truth)]
    if not per:
        return SuiteScore("classification", {"accuracy": None, "macro_f1": None, "examples": 0}, per, predicted)
    counts = Counter(truth)
    # The minority class: the rarest label among the references; a tie goes to the label listed first.
    minority = min((lab for lab in labels if counts[lab]), key=lambda lab: (counts[lab], labels.index(lab)))
    p, r, f, _ = precision_recall_fscore_support(truth, predicted, labels=[minority], average=None, zero_division=0)
    figures: dict[str, Any] = {
        "accuracy": float(accuracy_score(truth, predicted)),
        # Macro over the suite's labels present in the references (an output outside the set counts as wrong).
        "macro_f1": float(f1_score(truth, predicted, labels=[lab for lab in labels if counts[lab]], average="macro",
                                   zero_division=0)),
        "minority_class": minority,
        "minority_precision": float(p[0]), "minority_recall": float(r[0]), "minority_f1": float(f[0]),
        "unlabelled_outputs": predicted.count(NO_LABEL),
        "examples": len(per),
    }
    return SuiteScore("classification", figures, per, predicted)
