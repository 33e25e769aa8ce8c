# The points service (services/points, Spring Boot): building its executable jar. Sourced.
# Needs Java 17 and Maven (install_kafka in install.sh installs both when missing); Maven
# downloads the dependencies from Maven Central into ~/.m2 on the first build.

POINTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../services/points" && pwd)"
POINTS_JAR="$POINTS_DIR/target/points-service.jar"

# Builds services/points/target/points-service.jar when it is missing or older than the
# pom or any source file, and prints its path (the only line on stdout; Maven's output
# goes to stderr). About 50 s the first time on 2 cores with a cold ~/.m2, 20 s after.
build_points_service() {
  if [[ ! -f "$POINTS_JAR" || -n "$(find "$POINTS_DIR/pom.xml" "$POINTS_DIR/src" -newer "$POINTS_JAR" -print -quit)" ]]; then
    echo "== building the points service (Maven)" >&2
    mvn -q -B -Dstyle.color=never -f "$POINTS_DIR/pom.xml" package -DskipTests >&2
  fi
  echo "$POINTS_JAR"
}
