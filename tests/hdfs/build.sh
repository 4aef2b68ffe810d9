#!/usr/bin/env bash
# Build the MiniHdfs test launcher: resolve Hadoop's minicluster jars into ~/.m2 with Maven and
# compile MiniHdfs.java with javac. Idempotent; when nothing changed it only checks timestamps.
#
#   tests/hdfs/build.sh            # build if needed
#   tests/hdfs/build.sh --force    # rebuild
#
# Needs java and javac (17) and mvn on PATH; downloads come from Maven Central into ~/.m2
# (override with MAVEN_OPTS="-Dmaven.repo.local=..."). Outputs live in tests/hdfs/target/.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
target="$here/target"
classpath_file="$target/classpath.txt"
source_file="$here/src/main/java/cas/testing/hdfs/MiniHdfs.java"
class_file="$target/classes/cas/testing/hdfs/MiniHdfs.class"

for tool in java javac mvn; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "tests/hdfs/build.sh: '$tool' not found; install a JDK 17 and Maven (apt-get install openjdk-17-jdk-headless maven)" >&2
        exit 3
    fi
done

classpath_current() {
    [[ -s "$classpath_file" && "$classpath_file" -nt "$here/pom.xml" ]] || return 1
    local jar
    IFS=":" read -r -a jars < "$classpath_file" || true  # no newline at the end of the file
    for jar in "${jars[@]}"; do
        [[ -f "$jar" ]] || return 1
    done
}

if [[ "${1:-}" == "--force" ]]; then
    rm -rf "$target"
fi

if ! classpath_current; then
    mkdir -p "$target"
    # Maven's output only matters when it fails (quiet mode still prints colour resets).
    if ! mvn -B -q -Dstyle.color=never -f "$here/pom.xml" validate > "$target/mvn.log" 2>&1; then
        cat "$target/mvn.log" >&2
        echo "tests/hdfs/build.sh: Maven could not resolve the Hadoop minicluster (log above)" >&2
        exit 1
    fi
fi

if [[ ! -f "$class_file" || "$source_file" -nt "$class_file" || "$classpath_file" -nt "$class_file" ]]; then
    mkdir -p "$target/classes"
    javac -nowarn -encoding UTF-8 --release 17 -cp "$(cat "$classpath_file")" -d "$target/classes" "$source_file"
fi
