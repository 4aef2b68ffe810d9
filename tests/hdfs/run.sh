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

# Java 17 needs no --add-opens for this: MiniDFSCluster with WebHDFS from the shaded 3.4.1 jars
# starts and serves without them (checked); the missing piece was javax.xml.bind (see pom.xml).
# C1 only and a small serial heap: startup time matters more here than peak throughput.
exec java \
    -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
    -Djava.net.preferIPv4Stack=true \
    -Dorg.slf4j.simpleLogger.defaultLogLevel="${MINIHDFS_LOG_LEVEL:-warn}" \
    -Dorg.slf4j.simpleLogger.logFile=System.err \
    -cp "$classpath" cas.testing.hdfs.MiniHdfs "$@"
