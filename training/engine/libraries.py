"""The training libraries imported up front, once, in a process whose threads would otherwise each import them on
first use: transformers' lazy module is not safe to import from two threads at once (seen in the web server: a run
form's POST and its pre-flight check at the same moment, "cannot import name 'AutoTokenizer' from 'transformers'").

The web server imports them before it serves (dashboard/asgi.py) and a worker with slots (a thread per slot) before
it takes a task (dashboard/celery.py). A worker with one slot runs its tasks one at a time and imports them when one
needs them: its start costs no torch import (seconds of CPU), which is most of the worker starts there are."""
from __future__ import annotations


def import_up_front() -> None:
    """What the web server and a worker's own threads use of them: tokenizers (the template check, dataset
    statistics), configs and meta-device models (the planner's shapes)."""
    import accelerate  # noqa: F401
    import torch  # noqa: F401
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: F401
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING  # noqa: F401
