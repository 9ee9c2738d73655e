"""The API's one error shape from any DRF or Django error detail (pure): fields keep their names, nested ones are
dotted, non-field errors go under __all__."""
from django.core.exceptions import ValidationError

from training.api.errors import django_errors, error_dict


def test_error_details_become_field_lists():
    assert error_dict({"dataset": ["required"], "non_field_errors": ["bad"]}) == {"dataset": ["required"],
                                                                                "__all__": ["bad"]}
    assert error_dict({"overrides": {"r": ["too small"]}}) == {"overrides.r": ["too small"]}
    assert error_dict(["a", "b"]) == {"__all__": ["a", "b"]}
    assert error_dict("one") == {"__all__": ["one"]}
    assert error_dict({"eval_suites": {0: ["no such suite"]}}) == {"eval_suites.0": ["no such suite"]}


def test_the_services_validation_errors_keep_their_keys():
    assert django_errors(ValidationError({"fit": "fits no GPU", "lr_scheduler_kwargs.num_cycles": "> 0"})) == {
        "fit": ["fits no GPU"], "lr_scheduler_kwargs.num_cycles": ["> 0"]}
    assert django_errors(ValidationError("whole")) == {"__all__": ["whole"]}
