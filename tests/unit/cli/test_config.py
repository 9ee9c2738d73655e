"""The config store: written 0600 in the user's config dir, the environment over the file, clear errors."""
import stat

import pytest

from training.cli import config
from training.cli.config import Config, ConfigError


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    return tmp_path


def test_saved_owner_only_and_read_back(home):
    path = config.save(Config(url="http://tb:8000", token="tb_secret"))
    assert path == home / "tuneboard" / "config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert config.load(environ={}) == Config(url="http://tb:8000", token="tb_secret")


def test_an_existing_readable_file_is_made_owner_only(home):
    path = home / "tuneboard" / "config.json"
    path.parent.mkdir()
    path.write_text("{}")
    path.chmod(0o644)
    config.save(Config(url="http://tb", token="t"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_environment_overrides_the_file(home):
    config.save(Config(url="http://stored", token="stored"))
    assert config.load(environ={"TUNEBOARD_TOKEN": "env"}) == Config(url="http://stored", token="env")
    assert config.load(environ={"TUNEBOARD_URL": "other:9000/", "TUNEBOARD_TOKEN": "env"}) == Config(
        url="http://other:9000", token="env")


def test_nothing_stored_says_how_to_log_in(home):
    with pytest.raises(ConfigError, match="no server URL and token: run `tuneboard login`"):
        config.load(environ={})
    with pytest.raises(ConfigError, match="no token"):
        config.load(environ={"TUNEBOARD_URL": "http://x"})


def test_a_broken_file_is_named(home):
    path = home / "tuneboard" / "config.json"
    path.parent.mkdir()
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read .*config.json"):
        config.load(environ={})


@pytest.mark.parametrize("typed, url", [("localhost:8000", "http://localhost:8000"),
                                        ("https://tb.example.com/", "https://tb.example.com")])
def test_urls_are_normalized(typed, url):
    assert config.normalize_url(typed) == url


def test_a_non_http_url_is_refused():
    with pytest.raises(ConfigError, match="http:// or https://"):
        config.normalize_url("ftp://x")
