"""The Datasets page: the team's datasets, and an upload checked by the services with errors on the field."""
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from training.datasets import services as dataset_services
from training.models import Dataset

pytestmark = pytest.mark.django_db


def upload(client, team, name, content: bytes, filename="data.jsonl"):
    return client.post("/datasets/", {"team": str(team.id), "name": name,
                                      "file": SimpleUploadedFile(filename, content)})


def test_lists_only_the_teams_datasets(world, member_client):
    html = member_client.get("/datasets/").content.decode()
    assert "alpha data" in html and "beta data" not in html and "Upload a dataset" in html


def test_an_upload_is_checked_and_recorded(world, member_client):
    rows = b'{"prompt": "2+2=", "completion": "4"}\n{"prompt": "3+3=", "completion": "6"}\n'
    response = upload(member_client, world.team, "sums", rows)
    assert response.status_code == 302
    dataset = Dataset.objects.get(name="sums")
    assert dataset.team == world.team and dataset.rows == 2 and dataset.format == "prompt_completion"
    assert "sums" in member_client.get("/datasets/").content.decode()


@pytest.mark.parametrize("content, message", [
    (b'{"text": "ok"}\nnot json\n', "row 2: invalid JSON on line 2"),
    (b"", "The submitted file is empty"),
])
def test_a_bad_file_is_refused_on_the_file_field(world, member_client, content, message):
    before = Dataset.objects.count()
    response = upload(member_client, world.team, "bad", content)
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert message in " ".join(errors["file"]), errors
    assert Dataset.objects.count() == before


def test_unknown_columns_ask_for_a_mapping(world, member_client):
    before = Dataset.objects.count()
    response = upload(member_client, world.team, "bad", b'{"colour": "red"}\n')
    assert response.status_code == 400
    assert "the columns (colour) match no single format" in " ".join(response.context["form"].errors["format"])
    assert Dataset.objects.count() == before


def test_a_taken_name_is_refused_on_the_name_field(world, member_client):
    response = upload(member_client, world.team, "alpha data", b'{"text": "hi"}\n')
    assert response.status_code == 400 and "already has a dataset" in " ".join(response.context["form"].errors["name"])


def test_uploading_to_another_team_is_refused(world, member_client):
    before = Dataset.objects.count()
    response = upload(member_client, world.other_team, "sneaky", b'{"text": "hi"}\n')
    assert response.status_code == 400 and "team" in response.context["form"].errors
    assert Dataset.objects.count() == before


def test_a_viewer_sees_datasets_but_cannot_upload(world, viewer_client):
    html = viewer_client.get("/datasets/").content.decode()
    assert "alpha data" in html and "Upload a dataset" not in html
    before = Dataset.objects.count()
    assert upload(viewer_client, world.team, "viewer data", b'{"text": "hi"}\n').status_code == 403
    assert Dataset.objects.count() == before


def test_the_run_form_carries_each_datasets_advice(world, member_client, tiny_model):

    data = member_client.get("/runs/new/").context["form_data"]
    assert data["dataset_advice"] == {str(world.dataset.id): ["Rank for 64 rows: r 4–8"]}
    token = dataset_services.dataset_profile_start(dataset=world.dataset, user=world.member, max_length=64,
                                           model=tiny_model)["token"]
    dataset_services.dataset_profile_execute(dataset_id=world.dataset.id, token=token)
    advice = member_client.get("/runs/new/").context["form_data"]["dataset_advice"][str(world.dataset.id)]
    assert advice[0] == "Rank for 64 rows: r 4–8" and advice[1].startswith("Packing (64 tokens): packing")
    assert "keeps 99% of examples whole" in advice[2]
    html = member_client.get(f"/datasets/{world.dataset.id}/").content.decode()
    assert 'id="length-histogram"' in html and "r 4–8 for 64 training rows" in html


def test_a_separate_eval_dataset_is_profiled_for_overlap(world, member_client, tmp_path, tiny_model):
    from tests.factories import make_dataset

    held_out = make_dataset(world.team, world.member, rows=10, tmp_dir=tmp_path, name="held out")
    response = member_client.post(f"/datasets/{world.dataset.id}/", {
        "model": tiny_model, "max_length": "64", "batch_size": "4", "seed": "1",
        "eval_dataset": str(held_out.id)})
    assert response.status_code == 302
    world.dataset.refresh_from_db()
    dataset_services.dataset_profile_execute(dataset_id=world.dataset.id, token=world.dataset.stats["profile"]["token"])
    result = member_client.get(f"/datasets/{world.dataset.id}/profile.json").json()["result"]
    # Both files come from the same generator (seed 0): the 10 held-out rows are the first 10 training rows.
    assert (result["train_rows"], result["eval_rows"], result["overlap_rows"]) == (64, 10, 10)
    other = member_client.post(f"/datasets/{world.dataset.id}/", {
        "model": "m", "max_length": "64", "batch_size": "4", "seed": "1", "eval_dataset": str(world.other_dataset.id)})
    assert other.status_code == 400 and "eval_dataset" in other.context["form"].errors
