"""The environment a worker's child (`python -m training.engine ...`) starts with: an allow-list of what the engine
and its libraries read, never the worker's own secrets. Pure: the caller hands over the worker's environment.

A worker holds DATABASE_URL, REDIS_URL, SECRET_KEY, DJANGO_SETTINGS_MODULE and tracker credentials; a child runs a
team's model, adapter, data and task, where any code execution (a template, a pickle, a library bug) would otherwise
read them from its own environment. So a child gets only the families below, with anything named like a credential
dropped even inside them (HF_TOKEN: the engine reads models from the model roots or the public hub; a gated model
goes into a model root)."""
from __future__ import annotations

import os
import re
from typing import Mapping

# Exact names: the process basics, the locale, temporary and cache folders, the compilers Triton may call, and what
# backends.py reads to tell WSL (where the allocator setting differs).
ALLOWED_NAMES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP", "LD_LIBRARY_PATH",
    "XDG_CACHE_HOME", "CC", "CXX", "WSL_DISTRO_NAME", "WSL_INTEROP",
    # The hub through the deployment's proxy and certificates (a proxy URL with a password is dropped below).
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
})
# Families: the locale, the GPU and its collectives, the CPU thread pools, torch and its compilers, and the model
# libraries' caches and switches.
ALLOWED_PREFIXES = ("LC_", "CUDA_", "NVIDIA_", "NCCL_", "OMP_", "MKL_", "KMP_", "TORCH", "PYTORCH_", "TRITON_",
                    "UNSLOTH_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TOKENIZERS_", "BNB_")
# A part of a name (split at "_") that says "credential": HF_TOKEN, HUGGING_FACE_HUB_TOKEN, *_API_KEY, *_SECRET,
# *_PASSWORD. TOKENIZERS_PARALLELISM is not one (its part is TOKENIZERS).
_CREDENTIAL_PART = re.compile(r"(SECRET|PASSWORD|PASSWD|CREDENTIAL|PRIVATE)|(TOKEN|KEY|AUTH|COOKIE)S?$")
_USERINFO = re.compile(r"://[^/@]*@")  # scheme://user:password@host


def is_credential(name: str) -> bool:
    """Whether a variable's name says it holds a credential."""
    return any(_CREDENTIAL_PART.search(part) for part in name.upper().split("_") if part)


def child_environment(parent: Mapping[str, str], *, code_path: str, hub_offline: bool,
                      threads: int | None = None) -> dict[str, str]:
    """What a child of a worker whose environment is `parent` starts with: the allowed names and families of
    `parent` (no credential among them), PYTHONPATH to the checkout (`code_path`: the engine is imported from it,
    whatever the child's working folder) before the worker's own, unbuffered output (its events are read line by line), the hub's
    offline switches on an offline cluster, and `threads` CPU threads unless the worker's environment sets them."""
    env = {name: value for name, value in parent.items()
           if (name in ALLOWED_NAMES or name.startswith(ALLOWED_PREFIXES)) and not is_credential(name)
           and not _USERINFO.search(value)}
    if threads is not None:
        env.setdefault("OMP_NUM_THREADS", str(threads))
    # The checkout first; then the worker's own import path, where a deployment may keep the libraries the worker
    # itself imports (pip --target): code, not secrets, and the checkout is on the path anyway.
    inherited = [p for p in parent.get("PYTHONPATH", "").split(os.pathsep) if p and p != code_path]
    env["PYTHONPATH"] = os.pathsep.join([code_path, *inherited])
    env["PYTHONUNBUFFERED"] = "1"
    if hub_offline:
        # An offline cluster: the libraries must not try the hub either (a name that is not a folder fails).
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return env
