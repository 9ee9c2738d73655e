"""The environment helpers behind dashboard/settings.py: a bad value is refused naming the variable."""
import pytest
from django.core.exceptions import ImproperlyConfigured

from dashboard.env import database_from_url, env_bool, env_int, env_json_object, env_list, env_secret, redis_url


def test_booleans_accept_the_usual_spellings_and_refuse_the_rest(monkeypatch):
    for raw, value in [("1", True), ("yes", True), ("On", True), ("0", False), ("false", False), ("", False)]:
        monkeypatch.setenv("DEBUG", raw)
        assert env_bool("DEBUG", not value) is value
    monkeypatch.setenv("DEBUG", "maybe")
    with pytest.raises(ImproperlyConfigured, match=r"DEBUG='maybe' is not a boolean; allowed: 1/0"):
        env_bool("DEBUG", False)
    monkeypatch.delenv("DEBUG")
    assert env_bool("DEBUG", True) is True


def test_numbers_and_lists(monkeypatch):
    monkeypatch.setenv("N", "twelve")
    with pytest.raises(ImproperlyConfigured, match="N='twelve' is not a whole number"):
        env_int("N", 1)
    monkeypatch.setenv("N", "-3")
    with pytest.raises(ImproperlyConfigured, match="minimum is 0"):
        env_int("N", 1, minimum=0)
    monkeypatch.setenv("HOSTS", " a.example, b.example ,,")
    assert env_list("HOSTS", []) == ["a.example", "b.example"]


def test_secrets_come_from_the_variable_or_its_file(monkeypatch, tmp_path):
    secret = tmp_path / "key"
    secret.write_text("s3cret\n")
    monkeypatch.setenv("SECRET_KEY_FILE", str(secret))
    assert env_secret("SECRET_KEY") == "s3cret"
    monkeypatch.setenv("SECRET_KEY", "other")
    with pytest.raises(ImproperlyConfigured, match="not both"):
        env_secret("SECRET_KEY")
    monkeypatch.delenv("SECRET_KEY")
    monkeypatch.setenv("SECRET_KEY_FILE", str(tmp_path / "missing"))
    with pytest.raises(ImproperlyConfigured, match="cannot be read"):
        env_secret("SECRET_KEY")


def test_service_urls(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgres://tb:p%40ss@db.internal:6543/tuneboard")
    db = database_from_url("DATABASE_URL", "")
    assert (db["USER"], db["PASSWORD"], db["HOST"], db["PORT"], db["NAME"]) == (
        "tb", "p@ss", "db.internal", "6543", "tuneboard")
    monkeypatch.setenv("DATABASE_URL", "mysql://x@y/z")
    with pytest.raises(ImproperlyConfigured, match="only PostgreSQL"):
        database_from_url("DATABASE_URL", "")
    monkeypatch.setenv("DATABASE_URL", "postgres://x@y:5432/")
    with pytest.raises(ImproperlyConfigured, match="names no database"):
        database_from_url("DATABASE_URL", "")
    monkeypatch.setenv("REDIS_URL", "http://localhost")
    with pytest.raises(ImproperlyConfigured, match="REDIS_URL"):
        redis_url("REDIS_URL", "")


def test_json_objects_are_refused_unless_they_are_objects(monkeypatch):
    assert env_json_object("TUNEBOARD_DETECTOR_THRESHOLDS", {}) == {}
    monkeypatch.setenv("TUNEBOARD_DETECTOR_THRESHOLDS", '{"flat_steps": 30}')
    assert env_json_object("TUNEBOARD_DETECTOR_THRESHOLDS", {}) == {"flat_steps": 30}
    monkeypatch.setenv("TUNEBOARD_DETECTOR_THRESHOLDS", "flat_steps=30")
    with pytest.raises(ImproperlyConfigured, match="TUNEBOARD_DETECTOR_THRESHOLDS is not valid JSON"):
        env_json_object("TUNEBOARD_DETECTOR_THRESHOLDS", {})
    monkeypatch.setenv("TUNEBOARD_DETECTOR_THRESHOLDS", "[30]")
    with pytest.raises(ImproperlyConfigured, match="must be a JSON object of names to numbers, not list"):
        env_json_object("TUNEBOARD_DETECTOR_THRESHOLDS", {})
