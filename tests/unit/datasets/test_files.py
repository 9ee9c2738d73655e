"""The streaming readers and row checks of training/datasets/files.py on small constructed files."""
import io
import json

import pytest

from training.datasets import files
from training.datasets.files import MAX_ERRORS, DatasetError, Mapping, check_and_normalise, detect, read_records


@pytest.mark.parametrize("read_bytes", [1, 3, 7, 64, 1 << 20])
def test_a_json_array_reads_the_same_across_any_buffer_boundary(monkeypatch, read_bytes):
    monkeypatch.setattr(files, "READ_BYTES", read_bytes)
    records = [{"text": "caf\u00e9 \u2603", "n": 12345}, {"text": "a\\\"b", "n": -1.5e3}, {"text": "[]{},", "n": None}]
    raw = ("\ufeff[\n " + " ,\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n]\n").encode()
    assert [r for _, r in read_records(io.BytesIO(raw), "json")] == records


def test_csv_quoted_newlines_stay_in_one_row_and_rows_are_numbered():
    raw = b'prompt,completion\n"line one\nline two","x"\n"p",""\n'
    with pytest.raises(DatasetError) as caught:
        check_and_normalise(io.BytesIO(raw), "csv")
    assert [str(e) for e in caught.value.errors] == ["row 2, completion: column 'completion' is empty; a row that "
                                                     "trains as empty text is refused"]


def test_errors_are_collected_up_to_the_limit_and_counted_beyond():
    raw = b"".join(b'{"text": ""}\n' for _ in range(MAX_ERRORS + 5))
    with pytest.raises(DatasetError) as caught:
        check_and_normalise(io.BytesIO(raw), "jsonl")
    assert len(caught.value.errors) == MAX_ERRORS and caught.value.more == 5
    assert caught.value.errors[-1].row == MAX_ERRORS


@pytest.mark.parametrize("columns, fmt", [
    (["messages", "id"], "messages"), (["prompt", "completion"], "prompt_completion"),
    (["instruction", "input", "output"], "instruction"), (["instruction", "output"], "instruction"),
    (["text", "source"], "text"), (["text", "messages"], None), (["question", "answer"], None),
])
def test_detection(columns, fmt):
    found = detect(columns)
    assert (found.format if found else None) == fmt


def test_instruction_rows_become_a_user_and_an_assistant_turn():
    out = io.BytesIO()
    check_and_normalise(io.BytesIO(b'{"task": "Add", "data": "", "answer": "3"}\n'), "jsonl", out,
                        Mapping("instruction", {"instruction": "task", "input": "data", "output": "answer"}))
    assert json.loads(out.getvalue()) == {"messages": [{"role": "user", "content": "Add"},
                                                       {"role": "assistant", "content": "3"}]}
