"""The engine's data reader, event stream and failure classification: pure logic, no model."""
import io
import json

import pandas as pd
import pytest
import torch

from training.engine.config import ConfigError, parse_config
from training.engine.data import detect_format, load_data
from training.engine.events import EventSink, make_event
from training.engine.runner import _is_oom


def config_for(path, **extra):
    return parse_config({"model": "m", "train_file": str(path), **extra})


def test_csv_and_parquet_and_jsonl_are_read(tmp_path):
    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(10)]
    pd.DataFrame(rows).to_csv(tmp_path / "d.csv", index=False)
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    for name in ("d.csv", "d.parquet", "d.jsonl"):
        train, evaluation, fmt = load_data(config_for(tmp_path / name, eval_split=0.2))
        assert fmt == "prompt_completion" and (len(train), len(evaluation)) == (8, 2)


def test_an_eval_file_must_have_the_train_format(tmp_path):
    (tmp_path / "t.jsonl").write_text(json.dumps({"text": "a"}) + "\n")
    (tmp_path / "e.jsonl").write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    with pytest.raises(ConfigError) as exc:
        load_data(config_for(tmp_path / "t.jsonl", eval_file=str(tmp_path / "e.jsonl")))
    assert "format text needs column(s) text" in exc.value.errors["eval_file"]


def test_unknown_columns_and_types_are_named(tmp_path):
    with pytest.raises(ConfigError) as exc:
        detect_format(["question", "answer"])
    assert "columns answer, question" in exc.value.errors["train_file"]
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(ConfigError) as exc:
        load_data(config_for(tmp_path / "d.txt"))
    assert "unsupported file type; allowed: .jsonl, .json, .csv, .parquet" in exc.value.errors["train_file"]


def test_completion_only_loss_needs_a_completion(tmp_path):
    (tmp_path / "t.jsonl").write_text(json.dumps({"text": "a"}) + "\n")
    with pytest.raises(ConfigError) as exc:
        load_data(config_for(tmp_path / "t.jsonl", completion_only_loss=True))
    assert "prompt_completion or messages" in exc.value.errors["completion_only_loss"]


def test_non_finite_numbers_travel_as_strings():
    event = make_event("metrics", step=3, loss=float("nan"), grad_norm=float("inf"))
    assert json.loads(json.dumps(event))["loss"] == "nan" and event["grad_norm"] == "inf"
    with pytest.raises(ValueError):
        make_event("progress")


def test_a_stream_ends_with_exactly_one_terminal_event():
    out = io.StringIO()
    sink = EventSink(out)
    sink.emit("log", message="hi")
    sink.emit("stopped", step=4, checkpoint=None, reason="signal SIGTERM")
    sink.emit("failed", step=4, error_class="X", message="late", traceback="", oom=False)
    types = [json.loads(line)["type"] for line in out.getvalue().splitlines()]
    assert types == ["log", "stopped"]


def test_cuda_out_of_memory_is_recognised():
    assert _is_oom(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert _is_oom(RuntimeError("CUDA error: out of memory"))
    assert not _is_oom(ValueError("bad shape"))


def test_a_cpu_allocation_refused_is_out_of_memory_too():
    """What torch's CPU allocator raises under a worker's per-slot address-space limit (seen on this machine)."""
    assert _is_oom(RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                                "memory: you tried to allocate 1056250000 bytes. Error code 12 (Cannot allocate "
                                "memory)"))
    assert _is_oom(MemoryError())
    assert not _is_oom(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


def _attention_warnings(config, backend, cuda, missing, monkeypatch):
    from training.engine import backends, runner

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(backends, "unsloth_varlen_missing", lambda: missing)
    events = []
    runner._unsloth_attention_warning(EventSink(io.StringIO(), callback=events.append), config, backend)
    return events


def test_unsloth_on_a_torch_without_gqa_varlen_attention_warns(tmp_path, monkeypatch):
    events = _attention_warnings(config_for(tmp_path / "d.jsonl", packing=True), "unsloth", True, "2.11.0",
                                 monkeypatch)
    assert [(e["code"], e["field"]) for e in events] == [("unsloth_attention_per_segment", "packing")]
    assert "torch 2.11.0" in events[0]["message"] and "torch >= 2.12" in events[0]["message"]


@pytest.mark.parametrize("backend, cuda, missing", [("hf", True, "2.11.0"), ("unsloth", False, "2.11.0"),
                                                    ("unsloth", True, None)])
def test_no_attention_warning_where_unsloth_attends_in_one_call_or_is_not_on_a_gpu(tmp_path, monkeypatch, backend,
                                                                                   cuda, missing):
    assert _attention_warnings(config_for(tmp_path / "d.jsonl"), backend, cuda, missing, monkeypatch) == []


def test_the_varlen_check_reads_torchs_signature(monkeypatch):
    import torch.nn.attention.varlen as varlen

    from training.engine import backends

    assert backends.unsloth_varlen_missing() is None  # the pinned torch 2.13 has it

    def torch_2_11_varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None,
                               window_size=(-1, -1)):
        return None

    monkeypatch.setattr(varlen, "varlen_attn", torch_2_11_varlen_attn)
    assert backends.unsloth_varlen_missing() == torch.__version__



@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_model):
    """The session's tiny model's tokenizer: no model built for it alone."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.mark.parametrize("fmt", ["messages", "prompt_completion", "text"])
def test_rendered_lengths_in_one_batch_are_each_rows_own(tiny_tokenizer, fmt):
    """The batched count equals the row-by-row one (chat template applied to messages), rows of unequal lengths."""
    import datasets

    from training.engine.data import rendered_lengths

    pairs = [("what colour is the " + "big " * i + "apple?", "red " * (i + 1)) for i in range(7)]
    rows = {"messages": [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": c}]}
                         for p, c in pairs],
            "prompt_completion": [{"prompt": p, "completion": c} for p, c in pairs],
            "text": [{"text": p + " " + c} for p, c in pairs]}[fmt]
    dataset = datasets.Dataset.from_list(rows)

    def one(row):
        if fmt == "messages":
            ids = tiny_tokenizer.apply_chat_template(row["messages"], tokenize=True)
            return len(ids["input_ids"] if hasattr(ids, "keys") else ids)
        text = row["prompt"] + row["completion"] if fmt == "prompt_completion" else row["text"]
        return len(tiny_tokenizer(text)["input_ids"])

    expected = [one(row) for row in rows]
    assert len(set(expected)) > 3
    assert rendered_lengths(dataset, tiny_tokenizer, fmt) == expected
    assert rendered_lengths(dataset, tiny_tokenizer, fmt, limit=3) == expected[:3]
    assert rendered_lengths(dataset.select([]), tiny_tokenizer, fmt) == []
