#!/usr/bin/env bash
# Start the one-datanode HDFS built by build.sh, bound to 127.0.0.1.
#
#   tests/hdfs/run.sh BASE_DIR [HTTP_PORT [USER]]
#
# Prints "MINIHDFS READY http=127.0.0.1:PORT rpc=127.0.0.1:PORT superuser=NAME" on stdout when
# WebHDFS answers; stops on end of stdin or SIGTERM. Hadoop's log goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
classpath="$here/target/classes:$(cat "$here/target/classpath.txt")"

# Hadoop 3.4 reflects into JDK internals that Java 17 closes by default.
exec java \
    -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
    -Djava.net.preferIPv4Stack=true \
    -Dorg.slf4j.simpleLogger.defaultLogLevel="${MINIHDFS_LOG_LEVEL:-warn}" \
    -Dorg.slf4j.simpleLogger.logFile=System.err \
    --add-opens=java.base/java.lang=ALL-UNNAMED \
    --add-opens=java.base/java.util=ALL-UNNAMED \
    -cp "$classpath" cas.testing.hdfs.MiniHdfs "$@"
