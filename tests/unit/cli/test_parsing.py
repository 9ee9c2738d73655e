"""The command line's arguments: --set values as JSON where they parse, the API's errors as lines, exit codes of
bad arguments (typer's runner, no server)."""
import pytest
from typer.testing import CliRunner

from training.cli.main import app, main
from training.cli.parsing import InputError, format_errors, parse_sets


def test_set_values_are_json_where_they_parse_else_strings():
    assert parse_sets(["r=32", "learning_rate=1e-4", "packing=true", "lr_scheduler_type=cosine",
                       "target_modules=[\"q_proj\", \"v_proj\"]", "seed=null", "name=\"42\"", "empty="]) == {
        "r": 32, "learning_rate": 1e-4, "packing": True, "lr_scheduler_type": "cosine",
        "target_modules": ["q_proj", "v_proj"], "seed": None, "name": "42", "empty": ""}


def test_a_later_set_wins_and_dotted_names_nest():
    assert parse_sets(["r=8", "r=16", "lr_scheduler_kwargs.num_cycles=2", "lr_scheduler_kwargs.power=0.5"]) == {
        "r": 16, "lr_scheduler_kwargs": {"num_cycles": 2, "power": 0.5}}


def test_a_value_with_equals_signs_keeps_them():
    assert parse_sets(["chat_template=a=b"]) == {"chat_template": "a=b"}


@pytest.mark.parametrize("item", ["r", "=3", ".x=1", "a..b=1"])
def test_a_set_without_a_name_is_refused_naming_it(item):
    with pytest.raises(InputError, match="--set"):
        parse_sets([item])


def test_a_dotted_name_under_a_plain_value_is_refused():
    with pytest.raises(InputError, match="'r' was already set"):
        parse_sets(["r=8", "r.x=1"])


def test_field_errors_become_lines():
    assert format_errors({"r": ["must be > 0", "an integer"], "__all__": ["no"]}) == [
        "r: must be > 0", "r: an integer", "__all__: no"]


def exit_code(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exited:
        main(args)
    return exited.value.code


def test_a_bad_set_exits_2_before_any_request(monkeypatch, capsys):
    monkeypatch.setenv("TUNEBOARD_URL", "http://127.0.0.1:9")  # nothing listens: a request would be exit 1
    monkeypatch.setenv("TUNEBOARD_TOKEN", "tb_x")
    assert exit_code(["runs", "create", "--dataset", "1", "--set", "r"]) == 2
    assert "expected NAME=VALUE" in capsys.readouterr().err


def test_an_unreachable_server_exits_1(monkeypatch, capsys):
    monkeypatch.setenv("TUNEBOARD_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("TUNEBOARD_TOKEN", "tb_x")
    assert exit_code(["runs", "list"]) == 1
    assert "cannot reach http://127.0.0.1:9" in capsys.readouterr().err


def test_a_non_integer_id_is_a_usage_error():
    assert exit_code(["runs", "show", "seven"]) == 2


def test_the_help_lists_the_exit_codes():
    result = CliRunner().invoke(app, ["--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "0 success" in text and "2 refused input" in text and "3 the watched run or sweep did not succeed" in text
