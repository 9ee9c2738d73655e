"""Registering a file already on the workers' shared storage: only inside TUNEBOARD_DATASET_ROOTS (no "..", no
symlink out, no absolute path elsewhere), admins only, checked row by row; a dataset a run used cannot change."""
import json
import os
from pathlib import Path

import pytest
from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError

from dashboard.models import Membership
from tests.factories import make_member, make_run, make_team
from training.datasets import services as dataset_services
from training.datasets.files import Mapping
from training.models import Dataset

pytestmark = pytest.mark.django_db


@pytest.fixture
def root() -> Path:
    path = Path(settings.TUNEBOARD_DATASET_ROOTS[0])
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def admin():
    team = make_team()
    return team, make_member(team, role=Membership.Role.ADMIN)


def write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_file_in_a_root_is_recorded_in_place(admin, root):
    team, user = admin
    file = write(root / "pc.jsonl", [{"prompt": "a", "completion": "b"}] * 3)
    dataset = dataset_services.dataset_register(team=team, user=user, name="shared", path=str(file))
    assert (dataset.path, dataset.rows, dataset.format) == (str(file.resolve()), 3, "prompt_completion")
    assert dataset.source == Dataset.Source.REGISTERED and not dataset.stats["source"]["normalised"]


def test_a_file_needing_a_mapping_is_stored_normalised(admin, root):
    team, user = admin
    file = write(root / "qa.jsonl", [{"q": "a", "a": "b"}])
    dataset = dataset_services.dataset_register(team=team, user=user, name="qa", path=str(file),
                                        mapping=Mapping("prompt_completion", {"prompt": "q", "completion": "a"}))
    assert Path(dataset.path).parent == settings.DATASETS_DIR / str(team.id)
    assert json.loads(Path(dataset.path).read_text()) == {"prompt": "a", "completion": "b"}


@pytest.mark.parametrize("make_path", [
    lambda root, outside: str(root / ".." / outside.name / "data.jsonl"),
    lambda root, outside: str(root / "link-out.jsonl"),
    lambda root, outside: str(outside / "data.jsonl"),
    lambda root, outside: "/etc/passwd",
], ids=["dot-dot", "symlink-out", "absolute-elsewhere", "system-file"])
def test_paths_outside_the_roots_are_refused(admin, root, tmp_path, make_path):
    team, user = admin
    outside = tmp_path / "outside"
    outside.mkdir()
    write(outside / "data.jsonl", [{"text": "secret"}])
    link = root / "link-out.jsonl"
    if not link.is_symlink():
        os.symlink(outside / "data.jsonl", link)
    with pytest.raises(ValidationError) as caught:
        dataset_services.dataset_register(team=team, user=user, name="escape", path=make_path(root, outside))
    assert "must be inside one of" in caught.value.message_dict["path"][0]
    assert "TUNEBOARD_DATASET_ROOTS" in caught.value.message_dict["path"][0]
    assert not Dataset.objects.exists()


def test_relative_missing_and_bad_files_are_named(admin, root):
    team, user = admin
    cases = {"data.jsonl": "give an absolute path", str(root / "missing.jsonl"): "is not a file",
             str(write(root / "notes.txt", [{"text": "a"}])): "unsupported file type"}
    for path, message in cases.items():
        with pytest.raises(ValidationError) as caught:
            dataset_services.dataset_register(team=team, user=user, name="x", path=path)
        assert message in caught.value.message_dict["path"][0]
    bad = write(root / "bad.jsonl", [{"text": "a"}, {"text": ""}])
    with pytest.raises(ValidationError) as caught:
        dataset_services.dataset_register(team=team, user=user, name="x", path=str(bad))
    assert "row 2, text: column 'text' is empty" in caught.value.message_dict["file"][0]
    assert not Dataset.objects.exists() and not list((settings.DATASETS_DIR / str(team.id)).glob("*"))


def test_only_admins_register(admin, root):
    team, _ = admin
    member = make_member(team)
    with pytest.raises(PermissionDenied):
        dataset_services.dataset_register(team=team, user=member, name="x", path=str(write(root / "m.jsonl", [{"text": "a"}])))


def test_a_dataset_a_run_used_cannot_change_and_the_run_records_its_checksum(admin, root):
    team, user = admin
    dataset = dataset_services.dataset_register(team=team, user=user, name="shared",
                                        path=str(write(root / "t.jsonl", [{"text": "a"}, {"text": "b"}])))
    run = make_run(team, user, dataset)
    assert run.dataset_sha256 == dataset.sha256 and dataset.is_locked
    dataset.rows = 3
    with pytest.raises(ValidationError, match="cannot change"):
        dataset.save()


def test_the_page_registers_for_admins_and_names_the_escape(admin, root):
    from django.test import Client

    team, user = admin
    client = Client()
    client.force_login(user)
    first = client.get("/datasets/")
    assert "Register a file on shared storage" in first.content.decode()
    refused = client.post("/datasets/", {"register-team": str(team.id), "register-name": "out",
                                         "register-path": str(root / ".." / "elsewhere.jsonl")})
    assert refused.status_code == 400
    assert "must be inside one of" in " ".join(refused.context["register_form"].errors["path"])
    file = write(root / "page.jsonl", [{"q": "a", "a": "b"}])
    asked = client.post("/datasets/", {"register-team": str(team.id), "register-name": "qa",
                                       "register-path": str(file)})
    assert asked.status_code == 400 and asked.context["register_columns"] == ["q", "a"]
    done = client.post("/datasets/", {"register-team": str(team.id), "register-name": "qa",
                                      "register-path": str(file), "register-format": "prompt_completion",
                                      "register-column_prompt": "q", "register-column_completion": "a"})
    assert done.status_code == 302 and Dataset.objects.get(name="qa").rows == 1
    member = make_member(team)
    client.force_login(member)
    assert "Register a file on shared storage" not in client.get("/datasets/").content.decode()
    assert client.post("/datasets/", {"register-team": str(team.id), "register-name": "m",
                                      "register-path": str(file)}).status_code == 403
