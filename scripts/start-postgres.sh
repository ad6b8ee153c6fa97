#!/usr/bin/env bash
# Start the local PostgreSQL 15 cluster (Debian layout) and create the test
# role and database if they are missing. Needs root or the postgres user.
set -euo pipefail
if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  :
elif command -v pg_ctlcluster >/dev/null; then
  ver=$(ls /etc/postgresql 2>/dev/null | sort -n | tail -n 1)
  pg_ctlcluster "${ver:-15}" main start
  for _ in $(seq 1 50); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.2; done
else
  echo "PostgreSQL is not running and pg_ctlcluster is not installed;" >&2
  echo "start a server and set CROWDCOMPUTE_TEST_POSTGRES_URL." >&2
  exit 1
fi
as_pg() { if [ "$(id -u)" = 0 ]; then su postgres -c "$1"; else sh -c "$1"; fi; }
as_pg "psql -tAc \"SELECT 1 FROM pg_roles WHERE rolname='cc'\"" | grep -q 1 \
  || as_pg "psql -qc \"CREATE ROLE cc LOGIN PASSWORD 'cc' SUPERUSER\""
as_pg "psql -tAc \"SELECT 1 FROM pg_database WHERE datname='cc_test'\"" | grep -q 1 \
  || as_pg "createdb -O cc cc_test"
