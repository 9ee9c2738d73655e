"""Dataset files through the upload service and the Datasets page: every malformed file under tests/data/malformed
gets its own error naming the row and field, and leaves no Dataset row and no file behind; good files in every format
and a column mapping are stored as the engine's JSONL."""
import json
from pathlib import Path

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils.html import escape

from tests.factories import make_member, make_team
from training.datasets import services as dataset_services
from training.datasets.files import Mapping
from training.models import Dataset

pytestmark = pytest.mark.django_db
MALFORMED = Path(__file__).parents[2] / "data" / "malformed"

# file -> (the form field the error lands on, what the message says)
EXPECTED = {
    "empty.jsonl": ("file", "empty"),
    "only_blank_lines.jsonl": ("file", "the file has no rows"),
    "invalid_json_line3.jsonl": ("file", "row 3: invalid JSON on line 3"),
    "not_an_object_line2.jsonl": ("file", "row 2: must be an object of columns, not a list"),
    "undecodable_line2.jsonl": ("file", "row 2: undecodable bytes (byte 0xe9"),
    "empty_text_line2.jsonl": ("file", "row 2, text: column 'text' is empty"),
    "text_not_string_line2.jsonl": ("file", "row 2, text: column 'text' must be a string, not a number"),
    "missing_completion_line2.jsonl": ("file", "row 2, completion: column 'completion' is missing"),
    "completion_null_line1.jsonl": ("file", "row 1, completion: column 'completion' must be a string, not null"),
    "unknown_columns.jsonl": ("format", "the columns (question, answer) match no single format"),
    "ambiguous_columns.jsonl": ("format", "the columns (text, prompt, completion) match no single format"),
    "messages_unknown_role.jsonl": ("file", "row 1, messages[2]: unknown role 'bot'; allowed: system, user, assistant"),
    "messages_bad_order.jsonl": ("file", "row 1, messages[1]: bad order: assistant where user was expected"),
    "messages_end_with_user.jsonl": ("file", "row 1, messages: the conversation must end with an assistant message"),
    "messages_empty_list.jsonl": ("file", "row 1, messages: column 'messages' must be a non-empty list"),
    "messages_content_not_string.jsonl": ("file", "row 1, messages[1]: content must be a string, not a list"),
    "messages_empty_content.jsonl": ("file", "row 1, messages[2]: assistant message is empty"),
    "messages_system_in_middle.jsonl": ("file", "row 1, messages[2]: bad order: system where assistant was expected"),
    "instruction_missing_output.jsonl": ("file", "row 2, output: column 'output' is missing"),
    "json_not_array.json": ("file", "a .json file must be an array of records"),
    "json_truncated.json": ("file", "row 2: invalid JSON in row 2"),
    "json_empty_array.json": ("file", "the file has no rows (an empty array)"),
    "json_row_not_object.json": ("file", "row 2: must be an object of columns, not a string"),
    "json_missing_comma.json": ("file", "invalid JSON after row 1: expected , or ]"),
    "csv_header_only.csv": ("file", "the file has a header but no rows"),
    "csv_wrong_number_of_values.csv": ("file", "row 2: 3 values but the header has 2 columns"),
    "csv_empty_completion_row2.csv": ("file", "row 2, completion: column 'completion' is empty"),
    "csv_undecodable.csv": ("file", "row 2: undecodable bytes (byte 0xef on line 3)"),
    "parquet_not_parquet.parquet": ("file", "not a readable Parquet file"),
    "parquet_null_text_row2.parquet": ("file", "row 2, text: column 'text' must be a string, not null"),
    "parquet_completion_not_string.parquet": (
        "file", "row 1, completion: column 'completion' must be a string, not a number"),
    "wrong_extension.txt": ("file", "unsupported file type; allowed: .jsonl, .json, .csv, .parquet"),
}


def test_the_corpus_is_the_expected_list():
    assert sorted(p.name for p in MALFORMED.iterdir()) == sorted(EXPECTED) and len(EXPECTED) >= 20


@pytest.fixture
def member():
    team = make_team()
    return team, make_member(team)


def stored_files() -> list[Path]:
    return sorted(p for p in Path(settings.DATASETS_DIR).rglob("*") if p.is_file())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_malformed_file_is_refused_by_the_service(member, name):
    team, user = member
    key, message = EXPECTED[name]
    before = stored_files()
    with open(MALFORMED / name, "rb") as fh, pytest.raises(ValidationError) as caught:
        dataset_services.dataset_create_from_upload(team=team, user=user, name="bad", file=fh, filename=name)
    assert message in " ".join(caught.value.message_dict[key]), caught.value.message_dict
    assert not Dataset.objects.exists() and stored_files() == before


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_malformed_file_is_refused_on_the_page(member, name):
    team, user = member
    key, message = EXPECTED[name]
    client = Client()
    client.force_login(user)
    before = stored_files()
    response = client.post("/datasets/", {"team": str(team.id), "name": "bad", "file": SimpleUploadedFile(
        name, (MALFORMED / name).read_bytes())})
    assert response.status_code == 400
    html = response.content.decode()
    assert escape(message) in html, html[html.find("field-error") - 200:][:1500]
    assert message in " ".join(response.context["form"].errors[key])
    assert not Dataset.objects.exists() and stored_files() == before


GOOD = [
    ("pc.jsonl", b'{"prompt": "2+2=", "completion": "4"}\n\n{"prompt": "3+3=", "completion": "6", "id": 7}\n',
     "prompt_completion", [{"prompt": "2+2=", "completion": "4"}, {"prompt": "3+3=", "completion": "6"}]),
    ("text.json", b' [ {"text": "a"} ,\n{"text": "b\\u00e9"}]\n', "text", [{"text": "a"}, {"text": "b\u00e9"}]),
    ("chat.csv", b'messages\n"[{""role"": ""user"", ""content"": ""hi""}, {""role"": ""assistant"", ""content"": '
                 b'""yo""}]"\n', "messages",
     [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}]),
    ("alpaca.jsonl", b'{"instruction": "Add", "input": "1 2", "output": "3"}\n{"instruction": "Say hi", "output": "hi"}\n',
     "messages", [{"messages": [{"role": "user", "content": "Add\n\n1 2"}, {"role": "assistant", "content": "3"}]},
                  {"messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}]}]),
]


@pytest.mark.parametrize("name, content, fmt, rows", GOOD, ids=[g[0] for g in GOOD])
def test_good_files_are_stored_as_the_engines_jsonl(member, name, content, fmt, rows):
    team, user = member
    dataset = dataset_services.dataset_create_from_upload(team=team, user=user, name="good", file=SimpleUploadedFile(
        name, content), filename=name)
    assert dataset.format == fmt and dataset.rows == len(rows)
    assert [json.loads(line) for line in Path(dataset.path).read_text().splitlines()] == rows
    assert dataset.stats["source"]["file"] == name


def test_a_parquet_file_is_read(member, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    team, user = member
    pq.write_table(pa.table({"prompt": [f"q{i}" for i in range(3000)], "completion": ["a"] * 3000}),
                   tmp_path / "d.parquet", row_group_size=1000)
    with open(tmp_path / "d.parquet", "rb") as fh:
        dataset = dataset_services.dataset_create_from_upload(team=team, user=user, name="pq", file=fh, filename="d.parquet")
    assert dataset.rows == 3000 and dataset.format == "prompt_completion"


def test_a_mapping_names_the_columns(member):
    team, user = member
    content = b'{"question": "2+2=", "answer": "4"}\n'
    dataset = dataset_services.dataset_create_from_upload(
        team=team, user=user, name="mapped", file=SimpleUploadedFile("qa.jsonl", content),
        mapping=Mapping("prompt_completion", {"prompt": "question", "completion": "answer"}))
    assert json.loads(Path(dataset.path).read_text()) == {"prompt": "2+2=", "completion": "4"}
    assert dataset.stats["source"]["mapping"] == {"prompt": "question", "completion": "answer"}


def test_a_mapping_to_a_column_the_file_lacks_names_it(member):
    team, user = member
    with pytest.raises(ValidationError) as caught:
        dataset_services.dataset_create_from_upload(
            team=team, user=user, name="mapped", file=SimpleUploadedFile("qa.jsonl", b'{"q": "a", "a": "b"}\n'),
            mapping=Mapping("prompt_completion", {"prompt": "q", "completion": "answer"}))
    assert "column 'answer' is not in the file; it has q, a" in caught.value.message_dict["column_completion"][0]
    assert not Dataset.objects.exists()


def test_the_page_offers_the_files_columns_and_takes_a_mapping(member):
    team, user = member
    client = Client()
    client.force_login(user)
    content = b'{"question": "2+2=", "answer": "4"}\n'
    response = client.post("/datasets/", {"team": str(team.id), "name": "qa",
                                          "file": SimpleUploadedFile("qa.jsonl", content)})
    assert response.status_code == 400 and '<option value="question">' in response.content.decode()
    response = client.post("/datasets/", {"team": str(team.id), "name": "qa", "format": "prompt_completion",
                                          "column_prompt": "question", "column_completion": "answer",
                                          "file": SimpleUploadedFile("qa.jsonl", content)})
    assert response.status_code == 302
    assert Dataset.objects.get(name="qa").format == "prompt_completion"
