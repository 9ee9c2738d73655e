"""A worker's child starts from an allow-list: what the engine and its libraries read, never the worker's secrets."""
from training.runs.child_env import child_environment, is_credential

WORKER = {
    # What a worker holds and a child must not.
    "DATABASE_URL": "postgres://tuneboard:secret@db:5432/tuneboard",
    "REDIS_URL": "redis://:secret@redis:6379/0",
    "SECRET_KEY": "django-insecure-x",
    "DJANGO_SETTINGS_MODULE": "dashboard.settings",
    "MLFLOW_TRACKING_PASSWORD": "pw",
    "MLFLOW_TRACKING_URI": "http://mlflow:5000",
    "AWS_SECRET_ACCESS_KEY": "aws",
    "AWS_ACCESS_KEY_ID": "id",
    "HF_TOKEN": "hf_x",
    "HUGGING_FACE_HUB_TOKEN": "hf_y",
    "HF_API_KEY": "hf_z",
    "CUDA_SECRET": "s",
    "TUNEBOARD_VAR_DIR": "/var/tuneboard",
    "PYTHONPATH": "/srv/other:/srv/tuneboard",
    "VIRTUAL_ENV": "/srv/venv",
    "HTTPS_PROXY": "http://user:pw@proxy:3128",
    # What the engine and its libraries read.
    "PATH": "/usr/bin",
    "HOME": "/home/tuneboard",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "TZ": "UTC",
    "TMPDIR": "/tmp",
    "LD_LIBRARY_PATH": "/usr/local/cuda/lib64",
    "CUDA_VISIBLE_DEVICES": "0",
    "NVIDIA_VISIBLE_DEVICES": "all",
    "NCCL_NVLS_ENABLE": "0",
    "OMP_NUM_THREADS": "4",
    "MKL_NUM_THREADS": "4",
    "TORCHINDUCTOR_CACHE_DIR": "/cache/inductor",
    "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
    "TRITON_CACHE_DIR": "/cache/triton",
    "UNSLOTH_COMPILE_DISABLE": "1",
    "HF_HOME": "/cache/hf",
    "HF_DATASETS_CACHE": "/cache/datasets",
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
    "WSL_DISTRO_NAME": "Ubuntu",
    "NO_PROXY": "localhost",
}
KEPT = {"PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES",
        "NVIDIA_VISIBLE_DEVICES", "NCCL_NVLS_ENABLE", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "TORCHINDUCTOR_CACHE_DIR",
        "PYTORCH_CUDA_ALLOC_CONF", "TRITON_CACHE_DIR", "UNSLOTH_COMPILE_DISABLE", "HF_HOME", "HF_DATASETS_CACHE",
        "TRANSFORMERS_VERBOSITY", "TOKENIZERS_PARALLELISM", "WSL_DISTRO_NAME", "NO_PROXY"}


def test_a_child_keeps_what_the_engine_reads_and_nothing_of_the_workers_secrets():
    env = child_environment(WORKER, code_path="/srv/tuneboard", hub_offline=False)
    assert set(env) == KEPT | {"PYTHONPATH", "PYTHONUNBUFFERED"}
    assert {name: env[name] for name in KEPT} == {name: WORKER[name] for name in KEPT}
    assert env["PYTHONPATH"] == "/srv/tuneboard:/srv/other"  # the checkout first, then the worker's own libraries
    assert env["PYTHONUNBUFFERED"] == "1"
    assert not any("secret" in value or "pw" in value or "hf_" in value for value in env.values())


def test_a_credential_inside_an_allowed_family_is_dropped():
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_API_KEY", "CUDA_SECRET", "TORCH_PASSWORD",
                 "NCCL_AUTH", "TRANSFORMERS_KEYS", "HF_HUB_PRIVATE_THING"):
        assert is_credential(name), name
        assert name not in child_environment({name: "x"}, code_path="/c", hub_offline=False)
    for name in ("TOKENIZERS_PARALLELISM", "HF_HOME", "CUDA_VISIBLE_DEVICES", "KMP_AFFINITY"):
        assert not is_credential(name), name


def test_a_url_with_a_password_is_dropped_even_under_an_allowed_name():
    env = child_environment({"HTTPS_PROXY": "http://u:p@proxy:3128", "HTTP_PROXY": "http://proxy:3128",
                             "HF_ENDPOINT": "https://u:p@mirror"}, code_path="/c", hub_offline=False)
    assert env.get("HTTP_PROXY") == "http://proxy:3128"
    assert "HTTPS_PROXY" not in env and "HF_ENDPOINT" not in env


def test_offline_switches_and_a_slots_share_of_threads_unless_the_worker_sets_them():
    env = child_environment({"PATH": "/usr/bin"}, code_path="/c", hub_offline=True, threads=3)
    assert env["HF_HUB_OFFLINE"] == env["TRANSFORMERS_OFFLINE"] == env["HF_DATASETS_OFFLINE"] == "1"
    assert env["OMP_NUM_THREADS"] == "3"
    assert child_environment({"OMP_NUM_THREADS": "2"}, code_path="/c", hub_offline=False,
                             threads=3)["OMP_NUM_THREADS"] == "2"
    assert "HF_HUB_OFFLINE" not in child_environment({}, code_path="/c", hub_offline=False)
