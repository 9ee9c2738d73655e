"""Eval metrics on hand-made cases: empty outputs, Unicode, ties in F1, labels outside the set, bad metrics."""
import pytest

from training.evaluation import metrics
from training.evaluation.metrics import MetricError, score


def test_exact_match_ignores_surrounding_whitespace_only():
    s = score("exact_match", [" Paris\n", "paris", ""], ["Paris", "Paris", ""])
    assert s.scores == [1.0, 0.0, 1.0] and s.figures["exact_match"] == pytest.approx(2 / 3)


def test_contains_is_case_insensitive_and_an_empty_reference_is_never_contained():
    assert score("contains", ["The answer is PARIS.", "", "x"], ["paris", "paris", ""]).scores == [1.0, 0.0, 0.0]


def test_normalized_exact_match_drops_case_punctuation_articles_and_spaces():
    s = score("normalized_exact_match", ["The  Eiffel tower!", "¡Sí, señor!", "Ｐａｒｉｓ", ""],
              ["eiffel Tower", "sí señor", "paris", "the"])
    assert s.scores == [1.0, 1.0, 1.0, 1.0]  # full-width letters fold by NFKC; "the" normalises to empty


def test_rouge_l_counts_unicode_words_and_two_empty_texts_agree():
    s = score("rouge_l", ["the cat sat on", "日本語 です", "", "", "café au lait"],
              ["the cat sat", "日本語 です", "", "something", "Café au lait"])
    assert s.scores[0] == pytest.approx(2 * 0.75 * 1.0 / 1.75)  # P 3/4, R 3/3
    assert s.scores[1:] == [1.0, 1.0, 0.0, 1.0]


def test_classification_reads_the_longest_label_an_output_starts_with():
    labels = ["not spam", "spam"]
    assert metrics.label_of("Not spam, clearly.", labels) == "not spam"
    assert metrics.label_of("spam!", labels) == "spam"
    assert metrics.label_of("spammy", labels) == metrics.NO_LABEL
    assert metrics.label_of("", labels) == metrics.NO_LABEL


def test_classification_figures_with_the_minority_class():
    refs = ["spam", "ham", "ham", "ham", "spam", "ham"]
    outs = ["spam", "ham", "spam", "ham", "I think ham", ""]
    s = score("classification", outs, refs, labels=["ham", "spam"])
    assert s.predicted == ["spam", "ham", "spam", "ham", metrics.NO_LABEL, metrics.NO_LABEL]
    assert s.scores == [1.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    f = s.figures
    assert f["accuracy"] == pytest.approx(0.5) and f["minority_class"] == "spam"
    assert f["minority_precision"] == pytest.approx(0.5) and f["minority_recall"] == pytest.approx(0.5)
    assert f["minority_f1"] == pytest.approx(0.5) and f["unlabelled_outputs"] == 2
    # ham: P 2/2, R 2/4 -> F1 2/3; spam F1 1/2; macro = 7/12
    assert f["macro_f1"] == pytest.approx(7 / 12)


def test_a_tie_for_the_minority_class_goes_to_the_label_listed_first():
    s = score("classification", ["y", "x"], ["x", "y"], labels=["y", "x"])
    assert s.figures["minority_class"] == "y" and s.figures["accuracy"] == 0.0 and s.figures["macro_f1"] == 0.0


def test_an_empty_suite_has_no_figures_rather_than_a_division_by_zero():
    assert score("exact_match", [], []).figures == {"exact_match": None, "examples": 0}
    assert score("classification", [], [], labels=["x", "y"]).figures["accuracy"] is None


@pytest.mark.parametrize("metric, labels, field, says", [
    ("bleu", None, "metric", "unknown metric 'bleu'; allowed: exact_match"),
    ("classification", None, "labels", "at least two labels"),
    ("classification", ["Yes", "yes!"], "labels", "the same once normalised"),
    ("classification", ["yes", "..."], "labels", "empty once normalised"),
    ("rouge_l", ["a", "b"], "labels", "not rouge_l"),
])
def test_a_metric_the_suite_cannot_use_names_the_field(metric, labels, field, says):
    with pytest.raises(MetricError) as exc:
        score(metric, ["x"], ["y"], labels=labels)
    assert exc.value.field == field and says in exc.value.message


def test_a_reference_outside_the_label_set_is_an_error_naming_it():
    with pytest.raises(MetricError, match="references not in the label set: 'maybe'"):
        score("classification", ["yes"], ["maybe"], labels=["yes", "no"])
