"""Token statistics of a normalised dataset, exact and streaming: lengths, truncation, padding, packing, split, advice."""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np

from training.engine.chat import TemplateProblem, encode_chat, template_rules
from training.engine.derived import rank_range_for_dataset

HISTOGRAM_BINS = 40


@dataclass(frozen=True)
class Encoded:
    """One row as the trainer sees it: its token ids and which of them count toward the loss; for a chat, why the
    template refuses it (error) or what it changed."""
    ids: list[int]
    loss_mask: list[int]
    error: str | None = None
    changes: tuple[str, ...] = ()
    prompt_mismatch: str | None = None


Encoder = Callable[[list[dict]], list[Encoded]]
BATCH_ROWS = 512


def per_row(encode_one: Callable[[dict], Encoded]) -> Encoder:
    return lambda rows: [encode_one(row) for row in rows]


def _ids(batch) -> list[list[int]]:
    return [list(ids) for ids in batch["input_ids"]]


def tokenizer_encoder(tokenizer, *, completion_only_loss: bool = True) -> Encoder:
    """Encode rows the way the engine trains them: messages through training.engine.chat, the engine's own code
    (the model's template, its system rules, exactly the answers and their end-of-turn token when completion-only);
    text and completions get the EOS token appended and the completion starts where the tokenised prompt and
    prompt+completion diverge, as TRL's SFTTrainer does. With completion-only loss off, every token counts.
    A row the template refuses keeps its rendered tokens (none if it cannot render) and trains none of them."""
    eos = tokenizer.eos_token or ""
    rules = []  # the template's rules, probed at the first chat row (a text dataset needs no template)

    def with_eos(text: str) -> str:
        return text if text.endswith(eos) else text + eos

    def chat(messages) -> Encoded:
        if not rules:
            try:
                rules.append(template_rules(tokenizer))
            except TemplateProblem as exc:
                raise ValueError(f"model: {exc}") from None
        row = encode_chat(tokenizer, messages, rules[0], answers_only=completion_only_loss)
        changes = tuple(row.changes)
        if row.error:
            ids = encode_chat(tokenizer, messages, rules[0], answers_only=False).ids
            return Encoded(ids, [0] * len(ids), row.error, changes)
        return Encoded(row.ids, row.mask, None, changes, row.prompt_mismatch)

    def encode(rows: list[dict]) -> list[Encoded]:
        encoded: dict[int, Encoded] = {}
        pairs = [i for i, row in enumerate(rows) if "prompt" in row]
        texts = [i for i, row in enumerate(rows) if "text" in row]
        for i, row in enumerate(rows):
            if "messages" in row:
                encoded[i] = chat(row["messages"])
        if pairs:
            prompts = _ids(tokenizer([rows[i]["prompt"] for i in pairs]))
            fulls = _ids(tokenizer([rows[i]["prompt"] + with_eos(rows[i]["completion"]) for i in pairs]))
            for i, prompt, ids in zip(pairs, prompts, fulls):
                start = len(prompt)
                if ids[:start] != prompt:
                    start = next(k for k, (a, b) in enumerate(zip(prompt, ids)) if a != b)
                mask = [0] * start + [1] * (len(ids) - start)
                encoded[i] = Encoded(ids, mask if completion_only_loss else [1] * len(ids))
        if texts:
            for i, ids in zip(texts, _ids(tokenizer([with_eos(rows[i]["text"]) for i in texts]))):
                encoded[i] = Encoded(ids, [1] * len(ids))
        return [encoded[i] for i in range(len(rows))]

    return encode


def row_digest(row: dict) -> int:
    """A 64-bit hash of a row's content, to find duplicates and train/eval overlap."""
    canonical = json.dumps(row, sort_keys=True, ensure_ascii=False).encode()
    return int.from_bytes(hashlib.blake2b(canonical, digest_size=8).digest(), "little", signed=True)


def eval_indices(rows: int, ratio: float, seed: int) -> np.ndarray:
    """The rows the engine holds out for eval_split=ratio with this seed: datasets' train_test_split draws
    np.random.default_rng(seed).permutation(rows) and takes the first ceil(ratio * rows) as the test split."""
    n_test = math.ceil(ratio * rows)
    return np.random.default_rng(seed).permutation(rows)[:n_test]


def percentile(sorted_lengths: np.ndarray, p: float) -> int:
    """Nearest-rank percentile: the smallest length with at least p% of the rows at or below it."""
    rank = max(1, math.ceil(p / 100 * len(sorted_lengths)))
    return int(sorted_lengths[rank - 1])


def expected_batch_max(sorted_lengths: np.ndarray, batch: int) -> float:
    """E[longest sequence] of a batch of `batch` rows drawn without replacement: the i-th shortest (1-based) is the
    longest with probability C(i-1, batch-1) / C(n, batch)."""
    n = len(sorted_lengths)
    batch = min(batch, n)
    i = np.arange(batch, n + 1, dtype=np.float64)
    # log C(i-1, batch-1) by a running sum of log(i-1) - log(i-batch), from C(batch-1, batch-1) = 1.
    steps = np.log(i[:-1]) - np.log(i[:-1] - batch + 1)
    log_c = np.concatenate(([0.0], np.cumsum(steps)))
    log_total = math.lgamma(n + 1) - math.lgamma(batch + 1) - math.lgamma(n - batch + 1)
    return float(np.sum(np.exp(log_c - log_total) * sorted_lengths[batch - 1:]))


def histogram(lengths: np.ndarray, bins: int = HISTOGRAM_BINS) -> dict[str, list]:
    """Equal-width bins from 0 to the longest row (width a whole number of tokens)."""
    top = int(lengths.max())
    width = max(1, math.ceil((top + 1) / bins))
    counts = np.bincount(lengths // width, minlength=math.ceil((top + 1) / width))
    return {"width": width, "starts": [int(k * width) for k in range(len(counts))], "counts": counts.tolist()}


def advice(*, train_rows: int, sorted_lengths: np.ndarray, max_length: int) -> dict[str, Any]:
    """The seed's advice for this data: rank range by size, whether packing helps, a max_length keeping the tail."""
    low, high = rank_range_for_dataset(train_rows)
    if train_rows > 200_000:
        rank = f"r {low}–{high} only with evidence that a larger rank helps; consider rsLoRA (use_rslora)"
    elif low == high:
        rank = f"r {low}"
    else:
        rank = f"r {low}–{high}"
    n = len(sorted_lengths)
    under_quarter = float(np.count_nonzero(sorted_lengths < 0.25 * max_length) / n)
    under_half = float(np.count_nonzero(sorted_lengths < 0.5 * max_length) / n)
    if under_quarter > 0.5:
        packing = (f"packing will help: {under_quarter:.0%} of examples are under 25% of max_length "
                   f"({max_length})")
    elif under_half > 0.5:
        packing = (f"packing will likely help: {under_half:.0%} of examples are under half of max_length "
                   f"({max_length})")
    else:
        packing = (f"packing gains little: only {under_half:.0%} of examples are under half of max_length "
                   f"({max_length}); most fill the context anyway")
    p99 = percentile(sorted_lengths, 99)
    suggested = max(64, math.ceil(p99 / 64) * 64)
    left = int(np.count_nonzero(sorted_lengths > suggested))
    return {"rank_low": low, "rank_high": high, "rank": rank, "packing_helps": under_half > 0.5,
            "packing": packing, "share_under_quarter": under_quarter, "share_under_half": under_half,
            "max_length": suggested, "max_length_note": (
                f"max_length {suggested} keeps 99% of examples whole (the p99 is {p99} tokens); "
                f"{left} of {n} rows would still be cut")}


def profile(rows: Iterable[dict], encode: Encoder, *, total_rows: int, max_length: int, batch_size: int = 8,
            eval_ratio: float | None = None, seed: int = 3407, eval_rows: Iterable[dict] | None = None,
            progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Every figure the dataset page shows, computed over all rows in one pass (O(rows) small numbers in memory).
    The split is the engine's: `eval_ratio` and `seed` (train_test_split), or a separate `eval_rows` file."""
    lengths = np.zeros(total_rows, dtype=np.int64)
    loss_tokens = np.zeros(total_rows, dtype=np.int64)
    digests = np.zeros(total_rows, dtype=np.int64)
    count = 0
    template: dict[str, dict[str, list[int]]] = {"refused": {}, "changed": {}, "prompt_mismatch": {}}

    def add(batch: list[dict]) -> None:
        nonlocal count
        if count + len(batch) > total_rows:
            raise ValueError(f"the file has more rows than the {total_rows} recorded")
        for row, encoded in zip(batch, encode(batch)):
            lengths[count] = len(encoded.ids)
            loss_tokens[count] = sum(encoded.loss_mask[:max_length])
            digests[count] = row_digest(row)
            for kind, reasons in (("refused", [encoded.error] if encoded.error else []), ("changed", encoded.changes),
                                  ("prompt_mismatch", [encoded.prompt_mismatch] if encoded.prompt_mismatch else [])):
                for reason in reasons:
                    template[kind].setdefault(reason, []).append(count + 1)
            count += 1
        if progress is not None:
            progress(count)

    batch: list[dict] = []
    for row in rows:
        batch.append(row)
        if len(batch) == BATCH_ROWS:
            add(batch)
            batch = []
    if batch:
        add(batch)
    if count != total_rows:
        raise ValueError(f"the file has {count} rows, not the {total_rows} recorded")

    is_eval = np.zeros(total_rows, dtype=bool)
    eval_digests = np.zeros(0, dtype=np.int64)
    if eval_rows is not None:
        eval_digests = np.array([row_digest(row) for row in eval_rows], dtype=np.int64)
    elif eval_ratio:
        is_eval[eval_indices(total_rows, eval_ratio, seed)] = True
        eval_digests = digests[is_eval]
    train = ~is_eval
    train_lengths = np.sort(lengths[train])
    n = len(train_lengths)
    kept = np.minimum(train_lengths, max_length)
    real_tokens = int(kept.sum())
    # Sequences are cut at max_length first, so a batch pads to its longest cut sequence.
    e_max = expected_batch_max(kept, batch_size) if n else 0.0
    padding_waste = 1 - (real_tokens / n) / e_max if n else 0.0
    packed_sequences = math.ceil(real_tokens / max_length) if n else 0
    slots_unpacked = n * e_max
    slots_packed = packed_sequences * max_length
    train_digests = digests[train]
    return {
        "rows": total_rows,
        "train_rows": n,
        "eval_rows": int(is_eval.sum()) if eval_rows is None else len(eval_digests),
        "max_length": max_length,
        "batch_size": batch_size,
        "tokens": int(train_lengths.sum()),
        "p50": percentile(train_lengths, 50),
        "p95": percentile(train_lengths, 95),
        "max": int(train_lengths[-1]),
        "mean": float(train_lengths.mean()),
        "truncated_rows": int(np.count_nonzero(train_lengths > max_length)),
        "truncated_share": float(np.count_nonzero(train_lengths > max_length) / n),
        "padding_waste": padding_waste,
        "packed_sequences": packed_sequences,
        "packing_gain": slots_unpacked / slots_packed if slots_packed else 1.0,
        "packing_waste": 1 - real_tokens / slots_packed if slots_packed else 0.0,
        "completion_share": float(loss_tokens[train].sum() / real_tokens) if real_tokens else 0.0,
        "duplicate_rows": int(total_rows - len(np.unique(digests))),
        "overlap_rows": int(np.count_nonzero(np.isin(eval_digests, train_digests))),
        "histogram": histogram(train_lengths),
        # rows the model's chat template refuses or changes, by reason, with the first rows (1-based) of each
        "template": {kind: [{"reason": r, "rows": len(ix), "first_rows": ix[:5]} for r, ix in reasons.items()]
                     for kind, reasons in template.items()},
        "advice": advice(train_rows=n, sorted_lengths=train_lengths, max_length=max_length),
    }


def run_form_advice(rows: int, result: dict | None) -> list[str]:
    """The advice the run form shows for a dataset: the rank for its size, and, once its statistics exist, packing
    and max_length."""
    low, high = rank_range_for_dataset(rows)
    lines = [f"Rank for {rows} rows: " + (f"r {low}–{high} only with evidence, consider rsLoRA" if rows > 200_000
                                           else f"r {low}" if low == high else f"r {low}–{high}")]
    if result:
        lines.append(f"Packing ({result['max_length']} tokens): {result['advice']['packing']}")
        lines.append(result["advice"]["max_length_note"])
    return lines
