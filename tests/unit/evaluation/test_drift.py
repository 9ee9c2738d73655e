"""The base drift check's judgement on hand-made outputs."""
from training.evaluation.drift import judge


def test_no_drift_is_what_bias_none_promises():
    j = judge({0: "red red", 1: "blue"}, {0: "red red", 1: "blue"}, bias="none")
    assert j["changed"] == [] and j["drift"] == 0 and j["distance"] == 0 and j["as_expected"]


def test_drift_with_trained_biases_is_expected_and_measured():
    j = judge({0: "red red", 1: "blue", 2: "x"}, {0: "red red", 1: "green", 2: "x y"}, bias="all")
    assert j["changed"] == [1, 2] and j["drift"] == 2 / 3 and j["as_expected"]
    assert 0 < j["distance"] < 1 and "2 of 3 outputs differ" in j["text"]


def test_drift_with_bias_none_is_flagged():
    j = judge({0: "a b"}, {0: "c d"}, bias="none")
    assert j["as_expected"] is False and "unexpected" in j["text"]


def test_nothing_to_compare():
    assert judge({}, {0: "x"}, bias="none")["prompts"] == 0
