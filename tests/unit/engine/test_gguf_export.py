"""The export's spec checked before anything converts, and a failure reported as one `failed` event with the reason
(no model here: the conversions themselves are tests/integration/export/)."""
import io
import json

import pytest

from training.engine.events import EventSink
from training.engine.gguf_export import SpecError, check_quantizations, parse_spec, run

SPEC = {"model": "m", "adapter": "a", "out_dir": "o", "llama_cpp_dir": "l", "name": "run-1"}


def test_quantizations_are_llama_cpps_names_each_once():
    assert check_quantizations(["Q8_0", "q4_k_m", "q8_0"]) == ("q8_0", "q4_k_m")
    assert check_quantizations([]) == ()
    with pytest.raises(SpecError) as caught:
        check_quantizations(["q3_k_s"])
    assert caught.value.errors == {"quantizations": "'q3_k_s' is not offered; allowed: q8_0, q6_k, q5_k_m, q4_k_m, "
                                                    "q4_0"}
    with pytest.raises(SpecError, match="a list of names"):
        check_quantizations("q8_0")


@pytest.mark.parametrize("change, field", [
    ({"model": ""}, "model"), ({"colour": "red"}, "colour"),
    ({"merged_gguf": False, "lora_gguf": False}, "merged_gguf"),
    ({"quantizations": ["f32"]}, "quantizations")])
def test_a_bad_spec_names_the_field(change, field):
    with pytest.raises(SpecError) as caught:
        parse_spec({**SPEC, **change})
    assert field in caught.value.errors


def test_a_model_that_is_not_here_fails_with_the_reason(tmp_path):
    out = io.StringIO()
    converters = tmp_path / "llama.cpp"
    converters.mkdir()
    for script in ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py"):
        (converters / script).write_text("")
    code = run({**SPEC, "model": "meta-llama/Llama-3.2-1B", "out_dir": str(tmp_path / "out"),
                "llama_cpp_dir": str(converters)}, EventSink(out))
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert code == 1 and [e["type"] for e in events] == ["failed"]
    assert "meta-llama/Llama-3.2-1B is not a folder on this worker" in events[0]["message"]
    assert "fetches nothing" in events[0]["message"]


def test_missing_converters_say_where_they_come_from(tmp_path):
    out = io.StringIO()
    run({**SPEC, "llama_cpp_dir": str(tmp_path)}, EventSink(out))
    event = json.loads(out.getvalue())
    assert event["type"] == "failed" and "`make install` puts it there" in event["message"]
