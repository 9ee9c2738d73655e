"""Reading, checking and normalising dataset files (JSONL, JSON, CSV, Parquet) row by row, without Django."""
from __future__ import annotations

import codecs
import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator

SUFFIXES = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
# Roles each format maps to a column; a role in OPTIONAL may be left unmapped.
ROLES = {
    "text": ("text",),
    "prompt_completion": ("prompt", "completion"),
    "messages": ("messages",),
    "instruction": ("instruction", "input", "output"),
}
OPTIONAL = {"input"}
# Detection order: the first format whose columns are all present wins, unless another one also matches.
DETECT = ("messages", "prompt_completion", "instruction", "text")
DETECT_COLUMNS = {"messages": {"messages"}, "prompt_completion": {"prompt", "completion"},
                  "instruction": {"instruction", "output"}, "text": {"text"}}
MESSAGE_ROLES = ("system", "user", "assistant")
MAX_ERRORS = 20
READ_BYTES = 1 << 20
MAX_RECORD_CHARS = 64 << 20


@dataclass(frozen=True)
class RowError:
    row: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        if self.row is None:
            return self.message if self.field in (None, "file") else f"{self.field}: {self.message}"
        return f"row {self.row}{f', {self.field}' if self.field else ''}: {self.message}"


class DatasetError(Exception):
    """The file cannot be used; `errors` names each bad row (up to MAX_ERRORS) and `more` counts the rest."""

    def __init__(self, errors: list[RowError], more: int = 0, columns: list[str] | None = None):
        self.errors = errors
        self.more = more
        self.columns = columns or []
        super().__init__("; ".join(map(str, errors)) + (f"; and {more} more" if more else ""))


@dataclass(frozen=True)
class Mapping:
    """Which column plays each role of a format, e.g. Mapping("prompt_completion", {"prompt": "question", ...})."""
    format: str
    columns: dict[str, str] = field(default_factory=dict)

    def check(self, available: list[str]) -> None:
        if self.format not in ROLES:
            raise DatasetError([RowError(None, "format", f"unknown format {self.format!r}; allowed: "
                                                         f"{', '.join(ROLES)}")], columns=available)
        errors = []
        for role in ROLES[self.format]:
            column = self.columns.get(role)
            if not column and role in OPTIONAL:
                continue
            if not column:
                errors.append(RowError(None, role, f"choose the column that holds the {role}"))
            elif column not in available:
                errors.append(RowError(None, role, f"column {column!r} is not in the file; it has "
                                                   f"{', '.join(available) or 'no columns'}"))
        if errors:
            raise DatasetError(errors, columns=available)


def file_kind(name: str) -> str:
    kind = SUFFIXES.get(Path(name).suffix.lower())
    if kind is None:
        raise DatasetError([RowError(None, "file", f"{Path(name).name}: unsupported file type; allowed: "
                                                   f"{', '.join(SUFFIXES)}")])
    return kind


# Streaming readers: each yields (row number, record) and raises DatasetError on a row it cannot read. -------------

def _utf8_lines(fh: IO[bytes]) -> Iterator[tuple[int, str]]:
    for number, raw in enumerate(fh, start=1):
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DatasetError([RowError(number, None, f"undecodable bytes (byte 0x{raw[exc.start]:02x} at "
                                                       f"column {exc.start + 1}); the file must be UTF-8")]) from None


def read_jsonl(fh: IO[bytes]) -> Iterator[tuple[int, Any]]:
    row = 0
    for number, line in _utf8_lines(fh):
        if number == 1 and line.startswith("\ufeff"):
            line = line[1:]
        if not line.strip():
            continue  # blank lines (a trailing newline, say) carry no row
        row = number
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError([RowError(number, None, f"invalid JSON on line {number}: {exc.msg} at column "
                                                       f"{exc.colno}; one JSON object per line")]) from None
    if row == 0:
        raise DatasetError([RowError(None, "file", "the file has no rows")])


def read_json(fh: IO[bytes]) -> Iterator[tuple[int, Any]]:
    """A JSON array of records, decoded one record at a time from a sliding buffer."""
    decoder = json.JSONDecoder()
    text = codecs.getincrementaldecoder("utf-8-sig")()
    buf, pos, eof, row = "", 0, False, 0

    def more() -> bool:
        nonlocal buf, pos, eof
        if eof:
            return False
        block = fh.read(READ_BYTES)
        try:
            chunk = text.decode(block, final=not block)
        except UnicodeDecodeError as exc:
            raise DatasetError([RowError(row + 1, None, f"undecodable bytes (0x{exc.object[exc.start]:02x}); "
                                                        "the file must be UTF-8")]) from None
        eof = not block
        buf = buf[pos:] + chunk
        pos = 0
        return True

    def skip_space() -> str:
        nonlocal pos
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n":
                pos += 1
            if pos < len(buf):
                return buf[pos]
            if not more():
                return ""

    first = skip_space()
    if first == "":
        raise DatasetError([RowError(None, "file", "the file has no rows")])
    if first != "[":
        raise DatasetError([RowError(None, "file", "a .json file must be an array of records: [{...}, {...}]; "
                                                   "for one object per line use .jsonl")])
    pos += 1
    expect_value = True
    while True:
        ch = skip_space()
        if ch == "":
            raise DatasetError([RowError(row + 1, None, "invalid JSON: the array is not closed with ]")])
        if ch == "]" and (row == 0 or not expect_value):
            pos += 1
            break
        if not expect_value:
            if ch != ",":
                raise DatasetError([RowError(row + 1, None, f"invalid JSON after row {row}: expected , or ] "
                                                            f"but found {ch!r}")])
            pos += 1
            expect_value = True
            continue
        while True:
            try:
                value, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError as exc:
                # A record cut by the end of the buffer: read on, up to MAX_RECORD_CHARS; past that it is broken.
                if len(buf) - pos < MAX_RECORD_CHARS and more():
                    continue
                raise DatasetError([RowError(row + 1, None, f"invalid JSON in row {row + 1}: {exc.msg}")]) from None
            # A number or literal touching the buffer's end may be cut short; read on before trusting it.
            if end == len(buf) and not eof and more():
                continue
            break
        row += 1
        pos = end
        expect_value = False
        yield row, value
    if skip_space() != "":
        raise DatasetError([RowError(None, "file", "text after the closing ] of the array")])
    if row == 0:
        raise DatasetError([RowError(None, "file", "the file has no rows (an empty array)")])


def read_csv(fh: IO[bytes]) -> Iterator[tuple[int, Any]]:
    row = 0
    header: list[str] = []

    def lines() -> Iterator[str]:
        for number, line in enumerate(fh, start=1):
            try:
                yield line.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                where = "the header" if number == 1 else f"line {number}"
                raise DatasetError([RowError(row + 1 if number > 1 else None, None,
                                             f"undecodable bytes (byte 0x{line[exc.start]:02x} on {where}); "
                                             "the file must be UTF-8")]) from None

    reader = csv.reader(lines())
    try:
        header = [h.strip() for h in next(reader, None) or []]
        if not header:
            raise DatasetError([RowError(None, "file", "the file has no rows")])
        if len(set(header)) != len(header) or "" in header:
            raise DatasetError([RowError(None, "header", f"column names must be unique and non-empty: {header}")])
        for values in reader:
            if not values:
                continue
            row += 1
            if len(values) != len(header):
                raise DatasetError([RowError(row, None, f"{len(values)} values but the header has {len(header)} "
                                                        "columns")], columns=header)
            yield row, dict(zip(header, values))
    except csv.Error as exc:
        raise DatasetError([RowError(row + 1, None, f"unreadable CSV: {exc}")]) from None
    if row == 0:
        raise DatasetError([RowError(None, "file", "the file has a header but no rows")], columns=header)


def read_parquet(fh: IO[bytes]) -> Iterator[tuple[int, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(fh)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DatasetError([RowError(None, "file", f"not a readable Parquet file ({exc})")]) from None
    row = 0
    try:
        for batch in parquet.iter_batches(batch_size=1024):
            for record in batch.to_pylist():
                row += 1
                yield row, record
    except (pa.ArrowInvalid, OSError) as exc:
        raise DatasetError([RowError(row + 1, None, f"unreadable Parquet data ({exc})")]) from None
    if row == 0:
        raise DatasetError([RowError(None, "file", "the file has no rows")], columns=parquet.schema_arrow.names)


READERS = {"jsonl": read_jsonl, "json": read_json, "csv": read_csv, "parquet": read_parquet}


def read_records(fh: IO[bytes], kind: str) -> Iterator[tuple[int, Any]]:
    yield from READERS[kind](fh)


# Detection and per-row checks ----------------------------------------------------------------------------------

def detect(columns: list[str]) -> Mapping | None:
    """The format the columns name unambiguously, or None when the user has to map them."""
    present = set(columns)
    matches = [fmt for fmt in DETECT if DETECT_COLUMNS[fmt] <= present]
    if len(matches) != 1:
        return None
    fmt = matches[0]
    return Mapping(fmt, {role: role for role in ROLES[fmt] if role in present})


def _string(record: dict, column: str, role: str, row: int, errors: list[RowError], *, allow_empty=False) -> str:
    if column not in record:
        errors.append(RowError(row, role, f"column {column!r} is missing"))
        return ""
    value = record[column]
    if not isinstance(value, str):
        errors.append(RowError(row, role, f"column {column!r} must be a string, not {_type_name(value)}"))
        return ""
    if not allow_empty and not value.strip():
        errors.append(RowError(row, role, f"column {column!r} is empty; a row that trains as empty text is refused"))
    return value


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", type(None): "null", bool: "a boolean", int: "a number",
            float: "a number", str: "a string"}.get(type(value), type(value).__name__)


def _messages(record: dict, column: str, row: int, errors: list[RowError]) -> list[dict]:
    if column not in record:
        errors.append(RowError(row, "messages", f"column {column!r} is missing"))
        return []
    value = record[column]
    if isinstance(value, str):  # CSV cells hold the list as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            errors.append(RowError(row, "messages", f"column {column!r} is text that is not a JSON list of messages"))
            return []
    if not isinstance(value, list) or not value:
        errors.append(RowError(row, "messages", f"column {column!r} must be a non-empty list of "
                                                "{\"role\", \"content\"} objects"))
        return []
    out = []
    for i, message in enumerate(value, start=1):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            errors.append(RowError(row, where, f"must be an object with role and content, not {_type_name(message)}"))
            return []
        role, content = message.get("role"), message.get("content")
        if role not in MESSAGE_ROLES:
            errors.append(RowError(row, where, f"unknown role {role!r}; allowed: {', '.join(MESSAGE_ROLES)}"))
            return []
        if not isinstance(content, str):
            errors.append(RowError(row, where, f"content must be a string, not {_type_name(content)}"))
            return []
        if not content.strip():
            errors.append(RowError(row, where, f"{role} message is empty"))
            return []
        out.append({"role": role, "content": content})
    turns = out[1:] if out[0]["role"] == "system" else out
    expected = "user"
    for i, message in enumerate(turns, start=len(out) - len(turns) + 1):
        if message["role"] != expected:
            errors.append(RowError(row, f"messages[{i}]", f"bad order: {message['role']} where {expected} was "
                                                          "expected; after an optional first system message, "
                                                          "user and assistant alternate"))
            return []
        expected = "assistant" if expected == "user" else "user"
    if not turns or turns[-1]["role"] != "assistant":
        errors.append(RowError(row, "messages", "the conversation must end with an assistant message (nothing "
                                                "to learn otherwise)"))
        return []
    return out


def normalise(record: Any, mapping: Mapping, row: int) -> tuple[dict | None, list[RowError]]:
    """The row in the engine's format (text, prompt/completion or messages), or the errors that make it unusable.
    Instruction rows become a user turn (instruction, then the input after a blank line) and an assistant turn."""
    errors: list[RowError] = []
    if not isinstance(record, dict):
        return None, [RowError(row, None, f"must be an object of columns, not {_type_name(record)}")]
    cols, fmt = mapping.columns, mapping.format
    if fmt == "text":
        out = {"text": _string(record, cols["text"], "text", row, errors)}
    elif fmt == "prompt_completion":
        out = {"prompt": _string(record, cols["prompt"], "prompt", row, errors),
               "completion": _string(record, cols["completion"], "completion", row, errors)}
    elif fmt == "messages":
        out = {"messages": _messages(record, cols["messages"], row, errors)}
    else:
        instruction = _string(record, cols["instruction"], "instruction", row, errors)
        extra = ""
        if cols.get("input") and record.get(cols["input"]) is not None:
            extra = _string(record, cols["input"], "input", row, errors, allow_empty=True)
        output = _string(record, cols["output"], "output", row, errors)
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        out = {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": output}]}
    return (None, errors) if errors else (out, [])


def stored_format(mapping: Mapping) -> str:
    """The format of the normalised file the engine reads."""
    return "messages" if mapping.format == "instruction" else mapping.format


@dataclass
class Checked:
    rows: int
    mapping: Mapping
    columns: list[str]
    format: str


def check_and_normalise(fh: IO[bytes], kind: str, out: IO[bytes] | None = None,
                        mapping: Mapping | None = None) -> Checked:
    """Read every row, check it and (given `out`) write it normalised as JSONL; DatasetError lists bad rows."""
    errors: list[RowError] = []
    more = 0
    rows = 0
    columns: list[str] = []
    for number, record in read_records(fh, kind):
        if mapping is None:
            if not isinstance(record, dict):
                raise DatasetError([RowError(number, None, f"must be an object of columns, not {_type_name(record)}")])
            columns = list(record)
            mapping = detect(columns)
            if mapping is None:
                raise DatasetError([RowError(None, "format", (
                    f"the columns ({', '.join(columns) or 'none'}) match no single format; map them to one of: "
                    "text; prompt + completion; messages; instruction + input + output"))], columns=columns)
        elif rows == 0:
            columns = list(record) if isinstance(record, dict) else []
            mapping.check(columns)
        normal, row_errors = normalise(record, mapping, number)
        rows += 1
        if row_errors:
            if len(errors) < MAX_ERRORS:
                errors.append(row_errors[0])
            else:
                more += 1
            continue
        if out is not None and not errors:
            out.write(json.dumps(normal, ensure_ascii=False).encode() + b"\n")
    if errors:
        raise DatasetError(errors, more, columns=columns)
    assert mapping is not None  # every reader raises on a file without rows
    return Checked(rows=rows, mapping=mapping, columns=columns, format=stored_format(mapping))


def normalised_rows(fh: IO[bytes], kind: str, mapping: Mapping) -> Iterator[dict]:
    """The rows of a file already checked, in the engine's format (for statistics and the preview)."""
    for number, record in read_records(fh, kind):
        normal, errors = normalise(record, mapping, number)
        if errors:
            raise DatasetError(errors)
        yield normal


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def first_system_turn(path: Path, *, rows: int = 1000, max_chars: int = 100_000) -> str:
    """The first system turn of a normalised chat dataset (the playground's system prompt starts as it), looked for
    in its first `rows` rows; "" when it has none there, is not a chat dataset, or cannot be read."""
    try:
        with Path(path).open("rb") as fh:
            for number, record in read_jsonl(fh):
                messages = record.get("messages") if isinstance(record, dict) else None
                if not isinstance(messages, list):
                    return ""  # text or prompt/completion rows: no turns at all
                first = messages[0] if messages else None
                if isinstance(first, dict) and first.get("role") == "system" and isinstance(first.get("content"), str):
                    return first["content"][:max_chars]
                if number >= rows:
                    return ""
    except (OSError, DatasetError):
        return ""
    return ""
