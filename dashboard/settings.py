"""Tuneboard's one settings module: every deployment difference comes from the environment (see dashboard/env.py)."""
from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from dashboard.env import (
    database_from_url,
    env_bool,
    env_float,
    env_int,
    env_json_object,
    env_list,
    env_secret,
    env_str,
    redis_url,
)
from guidance.detectors import Thresholds

BASE_DIR = Path(__file__).resolve().parent.parent

# Development is the default so a fresh clone runs with no set-up; production sets DEBUG=0 and a SECRET_KEY.
DEBUG = env_bool("DEBUG", True)

SECRET_KEY = env_secret("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY (or SECRET_KEY_FILE) must be set when DEBUG is off")
    SECRET_KEY = "dev-only-key-for-local-tuneboard-never-deploy-this-one-0123456789"

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",  # runserver serves ASGI (websockets) in development
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "axes",  # login lockout (below)
    "rest_framework",  # the REST API under /api/v1/ (training/api/)
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # the API docs page's Swagger UI, served by the app itself (no CDN)
    "dashboard",
    "training",
    "guidance",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",  # last: turns a locked-out login into the lockout page
]

ROOT_URLCONF = "dashboard.urls"
ASGI_APPLICATION = "dashboard.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Without DATABASE_URL / REDIS_URL: the local servers on these ports, where `make dev` / `make test` start their own
# (dashboard/embedded.py) if none answers.
DATABASE_URL_DEFAULT = f"postgres://postgres@127.0.0.1:{env_int('TUNEBOARD_PG_PORT', 5432, minimum=1)}/tuneboard"
DATABASES = {"default": database_from_url("DATABASE_URL", DATABASE_URL_DEFAULT)}
DATABASES["default"]["CONN_MAX_AGE"] = env_int("DB_CONN_MAX_AGE", 0, minimum=0)
DATABASES["default"]["OPTIONS"] = {"connect_timeout": env_int("DB_CONNECT_TIMEOUT", 5, minimum=1)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"

# Login lockout (django-axes): FAILURE_LIMIT failed logins for one account, or from one address, lock that account
# and that address (each on its own) for LOCKOUT_MINUTES after the last attempt. The admin's login too.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: refuses a locked-out login before any password is checked
    "django.contrib.auth.backends.ModelBackend",
]
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_FAILURE_LIMIT = env_int("TUNEBOARD_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_float("TUNEBOARD_LOGIN_LOCKOUT_MINUTES", 15.0, minimum=0.1))
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/lockout.html"
# Behind reverse proxies the peer is the nearest proxy: with this many proxies in front, each appending the address
# it saw to X-Forwarded-For, the address is that header's entry this many from the right. 0: the peer's address.
TUNEBOARD_PROXY_COUNT = env_int("TUNEBOARD_PROXY_COUNT", 0, minimum=0)
AXES_CLIENT_IP_CALLABLE = "dashboard.client_ip.client_ip"

# The REST API (training/api/): personal tokens (Authorization: Bearer tb_...) or the session (the pages' own calls,
# with CSRF); one error shape for every endpoint (training/api/errors.py); JSON bodies up to DATA_UPLOAD_MAX_MEMORY_SIZE
# and dataset uploads up to TUNEBOARD_DATASET_MAX_BYTES, larger ones refused with 413 before they are read.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["training.api.authentication.BearerTokenAuthentication",
                                       "rest_framework.authentication.SessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["training.api.render.SafeJSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["training.api.parsers.LimitedJSONParser",
                               "training.api.parsers.LimitedMultiPartParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "training.api.errors.exception_handler",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "URL_FORMAT_OVERRIDE": None,  # ?format=csv is the metrics endpoint's own parameter, not a renderer's
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Tuneboard API",
    "DESCRIPTION": (
        "Tuneboard's REST API: the same rules as the pages (team scoping, roles, the run form's checks). Authenticate "
        "with `Authorization: Bearer <token>` (make one under Settings → API tokens). Errors: 400 "
        '`{"errors": {field: [message, ...]}}` (non-field errors under `__all__`); 401, 403, 404, 413 and 429 '
        '`{"detail": "..."}`; another team\'s object is a 404, a viewer\'s write a 403.'),
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # No call to swagger.io's online validator: the page must work with no network.
    "SWAGGER_UI_SETTINGS": {"validatorUrl": None, "deepLinking": True, "persistAuthorization": False},
    "ENUM_NAME_OVERRIDES": {"RunStatusEnum": "training.models.Run.Status",
                            "SweepStatusEnum": "training.models.Sweep.Status",
                            "DatasetFormatEnum": "training.models.Dataset.Format",
                            "UploadFormatEnum": "training.api.serializers.UPLOAD_FORMATS"},
    # The OpenAI-compatible /v1/ endpoints are not DRF views: a hook adds them (training/openai_api/schema.py).
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums",
                             "training.openai_api.schema.add_openai_endpoints"],
}
# Failed API token checks (a bad, revoked or expired token) from one address: after LIMIT within WINDOW_S seconds
# of the first, that address's token requests get 429 until the window ends (dashboard/tokens/limits.py).
TUNEBOARD_TOKEN_FAILURE_LIMIT = env_int("TUNEBOARD_TOKEN_FAILURE_LIMIT", 20, minimum=1)
TUNEBOARD_TOKEN_FAILURE_WINDOW_S = env_float("TUNEBOARD_TOKEN_FAILURE_WINDOW_S", 300.0, minimum=1.0)

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
    "dashboard.staticfinders.PlotlyFinder",  # static/vendor/plotly.min.js, from the plotly package
]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Hashed, compressed files in production (collectstatic runs at deploy); plain finders in development.
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

# Decided at start-up, not by the DEBUG a test runner forces off: development serves static files from the apps'
# folders as they change; production serves what collectstatic wrote.
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG

# Security: on by default when DEBUG is off, each one switchable for a deployment behind a TLS proxy.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", not DEBUG)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", not DEBUG)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
if env_bool("SECURE_PROXY_SSL_HEADER", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# Where runs, uploads and models live on this machine (the web and worker processes must share it).
VAR_DIR = Path(env_str("TUNEBOARD_VAR_DIR", str(BASE_DIR / "var"))).resolve()
RUNS_DIR = VAR_DIR / "runs"
DATASETS_DIR = VAR_DIR / "datasets"
SUITES_DIR = VAR_DIR / "suites"  # eval suites, checked and normalised like datasets
EVALS_DIR = VAR_DIR / "evals"  # each evaluation's prompts and spec, for the worker
MODELS_DIR = VAR_DIR / "models"
EXPORTS_DIR = VAR_DIR / "exports"  # each GGUF export's files, written by the run's worker, downloaded from the web
# llama.cpp's converters (convert_hf_to_gguf.py, convert_lora_to_gguf.py, conversion/, gguf-py/), which `make install`
# takes from PyPI's llama-cpp-python sdist into the venv (scripts/family_assets.py).
TUNEBOARD_LLAMA_CPP_DIR = env_str("TUNEBOARD_LLAMA_CPP_DIR",
                                  str(Path(sys.prefix) / "share" / "llama-cpp-python" / "llama.cpp"))
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
TUNEBOARD_DATASET_MAX_BYTES = env_int("TUNEBOARD_DATASET_MAX_BYTES", 2 * 1024**3, minimum=1)
# Team admins may register files in place (no copy) only inside these folders.
TUNEBOARD_DATASET_ROOTS = env_list("TUNEBOARD_DATASET_ROOTS", [str(VAR_DIR / "registered")])
# A run's model is a hub id or a folder inside these roots; never inside the runs, the datasets or the dataset
# roots, whatever this says (training/model_source.py). The worker checks again, on the real path, when it claims a run.
TUNEBOARD_MODEL_ROOTS = env_list("TUNEBOARD_MODEL_ROOTS", [str(MODELS_DIR)])
# An offline cluster: hub ids are refused, and training processes run with the hub offline.
TUNEBOARD_HUB_OFFLINE = env_bool("TUNEBOARD_HUB_OFFLINE", False)
# Dataset statistics (tokenizing every row) run on this queue's workers, never on a GPU worker's.
TUNEBOARD_CPU_QUEUE = env_str("TUNEBOARD_CPU_QUEUE", "cpu")

REDIS_URL = redis_url("REDIS_URL", f"redis://127.0.0.1:{env_int('TUNEBOARD_REDIS_PORT', 6379, minimum=1)}/0")

# Runs go to this Celery queue unless a team routes them elsewhere (a queue per GPU class).
TUNEBOARD_DEFAULT_QUEUE = env_str("TUNEBOARD_DEFAULT_QUEUE", "gpu")
# A stopping run that has not ended this long after its stop file appeared is killed (its step hangs).
TUNEBOARD_STOP_KILL_AFTER_S = env_float("TUNEBOARD_STOP_KILL_AFTER_S", 120.0, minimum=1.0)
# A playground's loaded model is released this long after its last prompt; while it is used, the runs queued for its
# worker wait (training/playground/hold.py), but for HOLD_MAX_S at most: a chat that goes on longer with runs waiting
# gives its worker to them (a team cannot keep another's runs waiting by chatting on).
TUNEBOARD_PLAYGROUND_IDLE_S = env_float("TUNEBOARD_PLAYGROUND_IDLE_S", 300.0, minimum=1.0)
TUNEBOARD_PLAYGROUND_HOLD_MAX_S = env_float("TUNEBOARD_PLAYGROUND_HOLD_MAX_S", 1800.0, minimum=1.0)
# Workers heartbeat every HEARTBEAT_S and, each time, mark runs lost whose worker has been silent SILENT_S; the web
# process makes the same lost-run check every HEARTBEAT_S (training/workers/heartbeat.py), so it holds with every
# worker dead. A killed worker's last beat is at most HEARTBEAT_S before the kill and the next lost-run check at most
# HEARTBEAT_S after the silence limit, so a run is lost within SILENT_S + 2 * HEARTBEAT_S = 60 s of the kill.
TUNEBOARD_HEARTBEAT_S = env_float("TUNEBOARD_HEARTBEAT_S", 5.0, minimum=0.5)
TUNEBOARD_WORKER_SILENT_S = env_float("TUNEBOARD_WORKER_SILENT_S", 50.0, minimum=1.0)
# Warm workers (training/runs/warm.py): a worker keeps its trainer process between runs (libraries imported, the last
# base model loaded) for the next run of the same team. "auto": on where the worker has a GPU, whose start-up it
# saves (42 s of a 55 s run on the H200, docs/benchmarks.md); off on a CPU-only worker (so in the tests, unless a
# test turns it on), where the fresh spare it starts beside each run imports on the same few cores that run trains
# on. 1/0 force it.
TUNEBOARD_WARM_WORKERS = "auto" if env_str("TUNEBOARD_WARM_WORKERS", "auto").strip().lower() == "auto" else \
    env_bool("TUNEBOARD_WARM_WORKERS", False)
# An idle warm process is ended after this long; at most MAX_IDLE of those that have served a run are kept (a worker
# with GPU slots can use one per slot), besides one fresh spare per backend.
TUNEBOARD_WARM_IDLE_S = env_float("TUNEBOARD_WARM_IDLE_S", 600.0, minimum=1.0)
TUNEBOARD_WARM_MAX_IDLE = env_int("TUNEBOARD_WARM_MAX_IDLE", 1, minimum=0)
# Lines of a training process's stderr kept on the run (the log tail the run page shows).
TUNEBOARD_LOG_TAIL_LINES = env_int("TUNEBOARD_LOG_TAIL_LINES", 200, minimum=1)
# Overrides of the symptom detectors' thresholds (guidance.detectors.Thresholds), as a JSON object; checked here so
# an unknown name or a bad value stops start-up rather than the first run.
TUNEBOARD_DETECTOR_THRESHOLDS = env_json_object("TUNEBOARD_DETECTOR_THRESHOLDS", {})
try:
    Thresholds.from_dict(TUNEBOARD_DETECTOR_THRESHOLDS)
except ValueError as exc:
    raise ImproperlyConfigured(f"TUNEBOARD_DETECTOR_THRESHOLDS: {exc}") from None

# GPU slots (training/planner/slots.py): a worker trains up to WORKER_SLOTS runs at once, each in its own process
# (Celery's threads pool; one slot keeps the solo pool). A run starts in a free slot when its predicted peak (the
# upper end of the planner's band) plus SLOT_MARGIN of it plus SLOT_CONTEXT_MB per process fits what the runs
# already admitted leave of the GPU; a waiting run asks again every SLOT_RETRY_S (the reason shows on its page).
TUNEBOARD_WORKER_SLOTS = env_int("TUNEBOARD_WORKER_SLOTS", 1, minimum=1)
TUNEBOARD_SLOT_MARGIN = env_float("TUNEBOARD_SLOT_MARGIN", 0.10, minimum=0.0)
TUNEBOARD_SLOT_CONTEXT_MB = env_int("TUNEBOARD_SLOT_CONTEXT_MB", 512, minimum=0)
TUNEBOARD_SLOT_RETRY_S = env_float("TUNEBOARD_SLOT_RETRY_S", 5.0, minimum=0.5)
# On a CPU worker: each training, evaluation and playground process's address space is limited to this many MiB
# (RLIMIT_AS; 0: no limit), so a run that needs more fails out of memory alone instead of the host's OOM killer
# picking a process. Leave it 0 on a GPU worker: CUDA reserves far more address space than it uses.
TUNEBOARD_SLOT_ADDRESS_SPACE_MB = env_int("TUNEBOARD_SLOT_ADDRESS_SPACE_MB", 0, minimum=0)

CELERY_BROKER_URL = REDIS_URL
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = TUNEBOARD_DEFAULT_QUEUE
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_TRACK_STARTED = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# A worker started without --pool/--concurrency takes its slots from TUNEBOARD_WORKER_SLOTS. With acks_late and a
# prefetch multiplier of 1, a worker of N threads reserves no more messages than it has free threads, so a run's
# task waits in the broker (for any worker) rather than behind another worker's training.
CELERY_WORKER_POOL = "solo" if TUNEBOARD_WORKER_SLOTS == 1 else "threads"
CELERY_WORKER_CONCURRENCY = TUNEBOARD_WORKER_SLOTS
# A run can train for days: the broker must not hand an unacknowledged (acks_late) task to another worker.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT_S", 7 * 24 * 3600)}

# An open websocket re-checks at once that its user may still see its run or team's rows when told the user's access
# changed (training/live/access_signals.py: a membership deleted or moved, a user deactivated or deleted), and closes
# if not. This setting is the backstop for changes that send no signal (a queryset's update(), raw SQL) or a message
# Redis lost: each socket also checks at least once in this many seconds. 30 s, not the 2 s it was when polling was
# the only way: each check is a database read (a new connection with CONN_MAX_AGE 0), and 100 sockets at 2 s took
# most of the ASGI server's database thread and held up new connects (docs/benchmarks.md, live, 2026-12-02).
TUNEBOARD_WS_ACCESS_RECHECK_S = env_float("TUNEBOARD_WS_ACCESS_RECHECK_S", 30.0, minimum=0.1)
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            # A consumer waits for messages with BZPOPMIN for 5 s at a time; redis-py >= 8 reads with a 5 s socket
            # timeout by default, so an idle websocket would die with "Timeout reading" after 5 s of silence.
            "hosts": [{"address": REDIS_URL, "socket_timeout": 15, "socket_connect_timeout": 5}],
            # Separate deployments (or test sessions) can share one Redis without seeing each other's runs.
            "prefix": env_str("TUNEBOARD_CHANNEL_PREFIX", "tuneboard"),
            # A browser busy with its replay must not drop a fast run's live points.
            "capacity": 1000,
        },
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}
