#!/usr/bin/env bash
# Install and start what the integration tests need that the test suite does not start itself.
#   PostgreSQL: the Debian cluster, with a 'cas' role and database, on 127.0.0.1:5432.
#   FUSE: libfuse 3 and fusermount3 (Debian's fuse3) for 'cas mount' (tests/test_mount.py).
# The S3 server (moto), the OSS protocol server and the HDFS MiniDFSCluster are started by the test
# suite's fixtures; Java and Maven come with the machine image, or are installed here.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
apt_updated=0
need() {  # need <command> <debian packages...>
    local cmd="$1"; shift
    command -v "$cmd" >/dev/null 2>&1 && return 0
    [ $apt_updated -eq 1 ] || { $SUDO apt-get update -qq; apt_updated=1; }
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

need javac openjdk-17-jdk-headless
need mvn maven
need fusermount3 fuse3
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need __no_such_command__ postgresql

version="$(ls /usr/lib/postgresql | sort -V | tail -n 1)"
if ! pg_lsclusters -h 2>/dev/null | grep -q "^$version main"; then
    $SUDO pg_createcluster "$version" main >/dev/null
fi
pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null || true
for _ in $(seq 1 30); do
    pg_isready -h 127.0.0.1 -p 5432 -q && break
    sleep 1
done
pg_isready -h 127.0.0.1 -p 5432
su postgres -c "psql -q -tc \"SELECT 1 FROM pg_roles WHERE rolname='cas'\" | grep -q 1 || psql -q -c \"CREATE ROLE cas LOGIN PASSWORD 'cas' CREATEDB\""
su postgres -c "psql -q -tc \"SELECT 1 FROM pg_database WHERE datname='cas'\" | grep -q 1 || createdb -O cas cas"
# tests/trust/test_roles.py creates the reader/writer/maintainer roles of docs/ROLES.md (and drops them).
su postgres -c "psql -q -c 'ALTER ROLE cas CREATEROLE'"
# The tests drop their databases WITH (FORCE); an autovacuum worker connected to one at that moment
# belongs to no role, and only pg_signal_backend's members may end it.
su postgres -c "PGOPTIONS='-c client_min_messages=warning' psql -q -c 'GRANT pg_signal_backend TO cas'"
echo "services: PostgreSQL $version on 127.0.0.1:5432 (role cas, database cas)"

# Resolve Hadoop's MiniDFSCluster from Maven Central (cached in ~/.m2) before the tests start it.
bash tests/hdfs/build.sh
