"""Where `tuneboard login` keeps the server's URL and the token: config.json in the user's config directory
(click's app dir: $XDG_CONFIG_HOME/tuneboard or ~/.config/tuneboard), mode 0600. TUNEBOARD_URL and TUNEBOARD_TOKEN
override what is stored."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import typer

FILE_NAME = "config.json"


class ConfigError(Exception):
    """No server or token, or a config file that cannot be read."""


@dataclass(frozen=True)
class Config:
    url: str
    token: str


def config_path() -> Path:
    return Path(typer.get_app_dir("tuneboard")) / FILE_NAME


def normalize_url(url: str) -> str:
    """The server's base URL as typed ("localhost:8000/", "https://tb.example.com") with a scheme and no trailing
    slash; refused if it is not http(s)."""
    url = url.strip().rstrip("/")
    if not url:
        raise ConfigError("the server URL is empty")
    if "://" not in url:
        url = f"http://{url}"
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"the server URL must start with http:// or https://, not {url!r}")
    return url


def save(config: Config, path: Path | None = None) -> Path:
    """Writes the file readable by its owner only: created 0600 (never world-readable, even for a moment)."""
    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = json.dumps({"url": config.url, "token": config.token}, indent=2) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)  # an existing file keeps its mode through O_CREAT
    return path


def stored(path: Path | None = None) -> dict:
    path = path or config_path()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}; run `tuneboard login` again") from None
    return data if isinstance(data, dict) else {}


def load(environ: dict | None = None, path: Path | None = None) -> Config:
    """The server and token to use: the environment's TUNEBOARD_URL/TUNEBOARD_TOKEN over the stored file."""
    environ = os.environ if environ is None else environ
    data = stored(path)
    url = environ.get("TUNEBOARD_URL") or data.get("url")
    token = environ.get("TUNEBOARD_TOKEN") or data.get("token")
    if not url or not token:
        missing = " and ".join(n for n, v in (("server URL", url), ("token", token)) if not v)
        raise ConfigError(f"no {missing}: run `tuneboard login`, or set TUNEBOARD_URL and TUNEBOARD_TOKEN")
    return Config(url=normalize_url(url), token=token)
