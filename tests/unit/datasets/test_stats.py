"""Dataset statistics on constructed data: a fake tokenizer of known lengths, then the real tiny tokenizer."""
import itertools
import math

import numpy as np
import pytest

from training.datasets.stats import Encoded, eval_indices, expected_batch_max, per_row, profile, tokenizer_encoder


@per_row
def fake_encode(row: dict) -> Encoded:
    """One token per character; the completion's characters count toward the loss."""
    if "text" in row:
        return Encoded([0] * len(row["text"]), [1] * len(row["text"]))
    return Encoded([0] * (len(row["prompt"]) + len(row["completion"])),
                   [0] * len(row["prompt"]) + [1] * len(row["completion"]))


def texts(*lengths: int) -> list[dict]:
    return [{"text": chr(97 + i % 26) * n} for i, n in enumerate(lengths)]


def test_lengths_truncation_padding_and_packing_are_exact():
    rows = texts(10, 10, 10, 10, 10, 10, 30, 30, 100, 100)
    stats = profile(rows, fake_encode, total_rows=10, max_length=64, batch_size=10)
    assert (stats["p50"], stats["p95"], stats["max"], stats["tokens"]) == (10, 100, 100, 320)
    assert stats["truncated_rows"] == 2 and stats["truncated_share"] == 0.2
    # One batch of all ten rows pads to 64 (the longest after the cut): 248 real tokens of 640 slots.
    assert stats["padding_waste"] == pytest.approx(1 - 248 / 640)
    # Packed: ceil(248 / 64) = 4 sequences of 64 = 256 slots instead of 640.
    assert stats["packed_sequences"] == 4 and stats["packing_gain"] == pytest.approx(640 / 256)
    assert stats["packing_waste"] == pytest.approx(1 - 248 / 256)
    assert stats["histogram"]["counts"][0] == 0 and sum(stats["histogram"]["counts"]) == 10


def test_batches_of_one_waste_nothing():
    stats = profile(texts(3, 7, 20), fake_encode, total_rows=3, max_length=64, batch_size=1)
    assert stats["padding_waste"] == pytest.approx(0)


def test_expected_padding_of_random_batches_matches_enumeration():
    lengths = np.array(sorted([4, 9, 9, 15, 22, 40, 41]))
    for batch in (2, 3, 5):
        exact = np.mean([max(c) for c in itertools.combinations(lengths, batch)])
        assert expected_batch_max(lengths, batch) == pytest.approx(exact)


def test_completion_share_counts_only_completion_tokens_kept_after_the_cut():
    rows = [{"prompt": "p" * 6, "completion": "c" * 4}, {"prompt": "p" * 2, "completion": "c" * 20}]
    stats = profile(rows, fake_encode, total_rows=2, max_length=16, batch_size=2)
    # Row 1: 10 tokens, 4 completion. Row 2 cut to 16: 2 prompt + 14 completion.
    assert stats["completion_share"] == pytest.approx((4 + 14) / (10 + 16))


def test_duplicates_and_the_engines_split_overlap():
    from datasets import Dataset as HFDataset

    rows = texts(*range(1, 21)) + texts(1, 2, 3)  # the last three repeat the first three
    split = HFDataset.from_list(rows).train_test_split(test_size=0.25, seed=7)
    held_out = sorted(r["text"] for r in split["test"])
    assert sorted(rows[i]["text"] for i in eval_indices(len(rows), 0.25, 7)) == held_out
    stats = profile(rows, fake_encode, total_rows=len(rows), max_length=64, eval_ratio=0.25, seed=7)
    train_texts = [r["text"] for r in split["train"]]
    assert stats["duplicate_rows"] == 3
    assert (stats["train_rows"], stats["eval_rows"]) == (len(split["train"]), math.ceil(0.25 * 23))
    assert stats["overlap_rows"] == sum(1 for t in held_out if t in train_texts)


def test_a_separate_eval_file_overlap():
    stats = profile(texts(5, 6, 7), fake_encode, total_rows=3, max_length=64,
                    eval_rows=texts(5, 9) + [{"text": "zzzzzzzzz"}])
    assert stats["eval_rows"] == 3 and stats["overlap_rows"] == 1 and stats["train_rows"] == 3


@pytest.mark.parametrize("rows, rank", [(499, (4, 8)), (500, (8, 16)), (2_000, (16, 32)), (10_000, (32, 64)),
                                        (50_000, (64, 64)), (200_001, (64, 128))])
def test_advice_rank_buckets(rows, rank):
    from training.datasets.stats import advice

    got = advice(train_rows=rows, sorted_lengths=np.array([10] * 10), max_length=64)
    assert (got["rank_low"], got["rank_high"]) == rank
    assert ("rsLoRA" in got["rank"]) == (rows > 200_000)


def test_advice_packing_and_max_length():
    from training.datasets.stats import advice

    short = advice(train_rows=100, sorted_lengths=np.array(sorted([10] * 90 + [300] * 10)), max_length=1024)
    assert short["packing_helps"] and "25%" in short["packing"]
    assert short["max_length"] == 320 and "p99 is 300" in short["max_length_note"]
    full = advice(train_rows=100, sorted_lengths=np.array([900] * 100), max_length=1024)
    assert not full["packing_helps"] and "gains little" in full["packing"]


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_model):
    """The session's tiny model's tokenizer: no model built for it alone."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def test_the_real_tokenizer_counts_chat_template_and_assistant_tokens(tiny_tokenizer):
    tok = tiny_tokenizer
    messages = [{"role": "user", "content": "what colour is the sky"}, {"role": "assistant", "content": "blue"}]
    encode = tokenizer_encoder(tok)
    encoded = encode([{"messages": messages}])[0]
    rendered = tok.apply_chat_template(messages, tokenize=False)
    assert encoded.ids == tok(rendered, add_special_tokens=False)["input_ids"]
    assistant = tok.decode([i for i, m in zip(encoded.ids, encoded.loss_mask) if m])
    assert assistant == "blue<|im_end|>"
    stats = profile([{"messages": messages}] * 2, encode, total_rows=2, max_length=512, batch_size=2)
    assert stats["max"] == len(encoded.ids) and stats["duplicate_rows"] == 1
    assert stats["completion_share"] == pytest.approx(sum(encoded.loss_mask) / len(encoded.ids))


def test_the_real_tokenizer_adds_eos_and_masks_the_prompt(tiny_tokenizer):
    tok = tiny_tokenizer
    encoded = tokenizer_encoder(tok)([{"prompt": "the sky is", "completion": " blue"}])[0]
    assert encoded.ids == tok("the sky is blue" + tok.eos_token)["input_ids"]
    assert tok.decode([i for i, m in zip(encoded.ids, encoded.loss_mask) if m]).endswith(tok.eos_token)
    assert encoded.loss_mask[0] == 0
