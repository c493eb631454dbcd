#!/usr/bin/env bash
# Start a local PostgreSQL server for the db/ test suite and print the URL.
#
# Usage (in .ci/run, before `make test`):
#
#     eval "$(.ci/postgres.sh)"
#
# stdout carries exactly one line, `export ALORE_TEST_POSTGRES_URL=...`; every
# other message goes to stderr so that the eval above only sees the export.
#
# Idempotent: installs Debian's `postgresql` package only when it is missing,
# reuses (or creates) the cluster, starts it only when it is down, and
# (re)creates the test role with a known password each time.  The server
# listens on 127.0.0.1 only; the role may create databases because the tests
# make a scratch database per test and drop it afterwards.
#
# Environment knobs (all optional):
#   ALORE_PG_USER      role for the tests         (default: alore_test)
#   ALORE_PG_PASSWORD  its password               (default: alore_test_pw)
#   ALORE_PG_DB        database owned by the role (default: alore_test)
set -euo pipefail

PG_USER=${ALORE_PG_USER:-alore_test}
PG_PASSWORD=${ALORE_PG_PASSWORD:-alore_test_pw}
PG_DB=${ALORE_PG_DB:-alore_test}
CLUSTER=main

say() { echo "postgres.sh: $*" >&2; }

# Everything below writes to stderr unless it is the final export line.
exec 3>&1 1>&2

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}
as_postgres() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi
}

# 1. Install the server from Debian's packages when it is absent.
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    say "installing postgresql from Debian packages"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
# The newest installed major version (e.g. 15 on bookworm).
VERSION=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)

# 2. A cluster: Debian normally creates `main` on install, but images built
#    with create_main_cluster=false (or a purged cluster) have none.
if ! pg_lsclusters -h | awk -v v="$VERSION" -v c="$CLUSTER" '$1 == v && $2 == c {f=1} END {exit !f}'; then
    say "creating cluster $VERSION/$CLUSTER"
    as_root pg_createcluster "$VERSION" "$CLUSTER" >/dev/null
fi
PORT=$(pg_lsclusters -h | awk -v v="$VERSION" -v c="$CLUSTER" '$1 == v && $2 == c {print $3}')

# Listen on the loopback address only: the password below is not a secret.
# Debian's postgresql.conf ends with `include_dir = 'conf.d'`, so a drop-in
# there overrides the default without editing the packaged file.
echo "listen_addresses = '127.0.0.1'" | as_root tee "/etc/postgresql/$VERSION/$CLUSTER/conf.d/alore-ci.conf" >/dev/null

# 3. Start it unless it is already up (no systemd in CI containers, so use
#    pg_ctlcluster directly); restart when it is up with another listen address.
#    `3>&-`: the daemon must not inherit the caller's stdout pipe, or the
#    caller's "$(...)" would wait for the server to exit.
STATUS=$(pg_lsclusters -h | awk -v v="$VERSION" -v c="$CLUSTER" '$1 == v && $2 == c {print $4}')
if [ "$STATUS" != "online" ]; then
    say "starting cluster $VERSION/$CLUSTER on 127.0.0.1:$PORT"
    as_root pg_ctlcluster "$VERSION" "$CLUSTER" start 3>&-
elif [ "$(as_postgres psql -p "$PORT" -tAc 'SHOW listen_addresses')" != "127.0.0.1" ]; then
    say "restarting cluster $VERSION/$CLUSTER to listen on 127.0.0.1 only"
    as_root pg_ctlcluster "$VERSION" "$CLUSTER" restart 3>&-
fi
for _ in $(seq 1 60); do
    pg_isready -q -h 127.0.0.1 -p "$PORT" && break
    sleep 0.5
done
pg_isready -q -h 127.0.0.1 -p "$PORT" || { say "server on 127.0.0.1:$PORT did not become ready"; exit 1; }

# 4. Role and database for the tests (password auth over TCP: Debian's
#    pg_hba.conf already has `host all all 127.0.0.1/32 scram-sha-256`).
as_postgres psql -p "$PORT" -v ON_ERROR_STOP=1 -q \
    -v user="$PG_USER" -v password="$PG_PASSWORD" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', :'user')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'user') \gexec
ALTER ROLE :"user" WITH LOGIN CREATEDB PASSWORD :'password';
SQL
if [ -z "$(as_postgres psql -p "$PORT" -tAc "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" ]; then
    as_postgres createdb -p "$PORT" -O "$PG_USER" "$PG_DB"
fi
say "PostgreSQL $VERSION ready on 127.0.0.1:$PORT, database $PG_DB, role $PG_USER"

echo "export ALORE_TEST_POSTGRES_URL=postgresql+psycopg://$PG_USER:$PG_PASSWORD@127.0.0.1:$PORT/$PG_DB" >&3
