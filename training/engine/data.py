"""Reading training data in the formats TRL takes (text, prompt/completion, messages) from JSONL/JSON/CSV/Parquet."""
from __future__ import annotations

from pathlib import Path

from .config import ConfigError, TrainConfig

LOADERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
FORMAT_COLUMNS = {"messages": {"messages"}, "prompt_completion": {"prompt", "completion"}, "text": {"text"}}


def load_file(path: str, field: str):
    import datasets

    p = Path(path)
    loader = LOADERS.get(p.suffix.lower())
    if loader is None:
        raise ConfigError({field: f"{p.name}: unsupported file type; allowed: {', '.join(LOADERS)}"})
    if not p.is_file():
        raise ConfigError({field: f"{path}: no such file"})
    datasets.disable_progress_bars()
    return datasets.load_dataset(loader, data_files=str(p), split="train")


def detect_format(columns: list[str], wanted: str = "auto", field: str = "train_file") -> str:
    cols = set(columns)
    if wanted != "auto":
        missing = FORMAT_COLUMNS[wanted] - cols
        if missing:
            raise ConfigError({field: f"format {wanted} needs column(s) {', '.join(sorted(missing))}; "
                                      f"the file has {', '.join(sorted(cols))}"})
        return wanted
    for fmt, needed in FORMAT_COLUMNS.items():
        if needed <= cols:
            return fmt
    raise ConfigError({field: f"no known format: columns {', '.join(sorted(cols)) or 'none'}; allowed: "
                              "'text', 'prompt'+'completion', or 'messages'"})


def load_data(config: TrainConfig):
    """Return (train, eval or None, format). Only the columns of the format travel to the trainer."""
    train = load_file(config.train_file, "train_file")
    if len(train) == 0:
        raise ConfigError({"train_file": "the file has no rows"})
    fmt = detect_format(train.column_names, config.data_format)
    if config.completion_only_loss is True and fmt == "text":
        raise ConfigError({"completion_only_loss": "text rows have no completion part; allowed with "
                                                   "prompt_completion or messages data"})
    keep = sorted(FORMAT_COLUMNS[fmt])
    train = train.select_columns(keep)
    evaluation = None
    if config.eval_file:
        evaluation = load_file(config.eval_file, "eval_file")
        detect_format(evaluation.column_names, fmt, field="eval_file")
        evaluation = evaluation.select_columns(keep)
    elif config.eval_split:
        split = train.train_test_split(test_size=config.eval_split, seed=config.seed)
        train, evaluation = split["train"], split["test"]
    return train, evaluation, fmt


def answers_only(config: TrainConfig, fmt: str) -> bool:
    """Whether only the answers train: completion_only_loss as given, and where it is left unset, yes for the formats
    that have answers (messages, prompt_completion), as TRL does for prompt_completion and Unsloth's notebooks do for
    chats (train_on_responses_only); text rows have none, so every token trains."""
    if config.completion_only_loss is not None:
        return config.completion_only_loss
    return fmt != "text"


def load_tokenizer(model: str):
    """The model's tokenizer alone (no weights): what the rows are encoded with before any model loads."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def encode_chats(dataset, tokenizer, *, answers_only: bool, field: str = "train_file"):
    """A messages dataset as the trainer takes it pre-tokenized: input_ids, and with answers only TRL's
    assistant_masks column (TRL and Unsloth both turn it into labels, packed or not). Returns (dataset, plan);
    raises ConfigError naming the rows the model's template cannot train as asked, before any model loads."""
    import datasets

    from .chat import TemplateProblem, plan_dataset

    try:
        plan = plan_dataset(tokenizer, dataset["messages"], answers_only=answers_only)
    except TemplateProblem as exc:
        raise ConfigError({field: str(exc)}) from None
    errors = plan.error()
    if errors:
        # the row numbers are the file's for train_file; an eval file's are its own
        raise ConfigError({(k if k == "completion_only_loss" else field): v for k, v in errors.items()})
    columns = {"input_ids": [row.ids for row in plan.rows]}
    if answers_only:
        columns["assistant_masks"] = [row.mask for row in plan.rows]
    return datasets.Dataset.from_dict(columns), plan


def rendered_lengths(dataset, tokenizer, fmt: str, limit: int = 2000) -> list[int]:
    """Token counts of up to `limit` rows as the trainer will see them (chat template applied to messages), the
    rows tokenized in one batched call. (On the lent H200's host this read 0.8-1.5 s for 2,000 rows either way, one
    by one or batched: the readings of both spread as wide as their difference.)"""
    rows = dataset.select(range(min(limit, len(dataset))))
    if len(rows) == 0:
        return []
    if "input_ids" in rows.column_names:
        return [len(ids) for ids in rows["input_ids"]]
    if fmt == "messages":
        ids = tokenizer.apply_chat_template(list(rows["messages"]), tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
    elif fmt == "prompt_completion":
        ids = tokenizer([p + c for p, c in zip(rows["prompt"], rows["completion"])])["input_ids"]
    else:
        ids = tokenizer(list(rows["text"]))["input_ids"]
    return [len(row) for row in ids]
