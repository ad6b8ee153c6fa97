#!/usr/bin/env bash
# Set up a virtual environment with every extra, start the services the tests
# need (PostgreSQL), and run the whole test suite. Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# CPU torch first, pinned, so no extra can pull a CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[torch,tensorflow,keras,lightning,transformers,s3,postgres,test]"

# PostgreSQL for the PostgreSQL catalog path: a real local server.
export CROWDCOMPUTE_TEST_POSTGRES_URL=${CROWDCOMPUTE_TEST_POSTGRES_URL:-postgresql+psycopg://cc:cc@127.0.0.1:5432/cc_test}
bash scripts/start-postgres.sh

.venv/bin/ruff check --quiet .
.venv/bin/mypy --strict checkpoint workflows sdk activities worker_app
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
