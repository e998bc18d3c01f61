#!/usr/bin/env bash
# Local Apache Kafka (KRaft, one combined broker/controller on loopback) for tests, the demo and benchmarks.
#
#   deploy/local/kafka.sh fetch                 resolve the Kafka jars from Maven Central into the cache
#   deploy/local/kafka.sh start [--dir D] [--port P] [--fresh]
#                                               format KRaft storage, start, wait until it accepts clients;
#                                               prints the bootstrap address (also written to D/bootstrap).
#                                               A broker started before in D restarts with its data and
#                                               ports; --fresh wipes them first
#   deploy/local/kafka.sh stop [--dir D]        stop the broker started in D
#   deploy/local/kafka.sh status [--dir D]      exit 0 when the broker in D is running
#
# Ports default to free ones chosen by the OS. The heap is small (KAFKA_HEAP_OPTS, default
# -Xms128m -Xmx768m) because the machine is shared with the tests.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${RUNSTREAM_CACHE:-$repo/.cache}"
kafka_version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/pom.xml")"
jars="$cache/kafka-$kafka_version/libs"
dir="$cache/kafka-run"
port=""
fresh=""
start_timeout="${KAFKA_START_TIMEOUT:-90}"

die() { echo "kafka.sh: $*" >&2; exit 1; }

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

java_opts=(${KAFKA_HEAP_OPTS:--Xms128m -Xmx768m} -XX:+UseG1GC -Djava.awt.headless=true
           -Dlog4j2.configurationFile="$here/log4j2.yaml")

fetch() {
  if [[ -f "$jars/.complete" ]]; then
    return 0
  fi
  command -v mvn >/dev/null || die "mvn not found: install Maven (Debian package maven)"
  command -v java >/dev/null || die "java not found: install a JDK 17 or newer"
  echo "kafka.sh: resolving Apache Kafka $kafka_version from Maven Central into $jars" >&2
  rm -rf "$jars"
  mkdir -p "$jars"
  mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="$jars" -DincludeScope=runtime >&2 \
    || die "could not resolve org.apache.kafka:kafka_2.13:$kafka_version with mvn"
  ls "$jars"/kafka_2.13-*.jar >/dev/null 2>&1 || die "kafka_2.13 jar missing after resolution in $jars"
  touch "$jars/.complete"
}

running() {
  [[ -f "$dir/kafka.pid" ]] && kill -0 "$(cat "$dir/kafka.pid")" 2>/dev/null
}

log_tail() {
  echo "---- last lines of $dir/kafka.log ----" >&2
  tail -n 40 "$dir/kafka.log" >&2 2>/dev/null || echo "(no log)" >&2
}

start() {
  fetch
  if running; then
    cat "$dir/bootstrap"
    return 0
  fi
  if [[ -n "$fresh" ]]; then
    rm -rf "$dir/data" "$dir/server.properties"
  fi
  if [[ -f "$dir/server.properties" && -f "$dir/data/meta.properties" ]]; then
    # A restart: same ports, same log directory, no formatting.
    port="$(sed -n 's|^advertised.listeners=PLAINTEXT://127.0.0.1:\([0-9]*\)$|\1|p' "$dir/server.properties")"
    [[ -n "$port" ]] || die "cannot read the port from $dir/server.properties; use --fresh"
    launch
    return 0
  fi
  [[ -n "$port" ]] || port="$(free_port)"
  local controller_port
  controller_port="$(free_port)"
  while [[ "$controller_port" == "$port" ]]; do controller_port="$(free_port)"; done
  rm -rf "$dir/data"
  mkdir -p "$dir/data"
  cat > "$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data
num.partitions=3
num.network.threads=2
num.io.threads=4
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
message.max.bytes=16777216
PROPS
  local cluster_id
  cluster_id="$(java -cp "$jars/*" kafka.tools.StorageTool random-uuid)" || die "StorageTool random-uuid failed"
  java "${java_opts[@]}" -cp "$jars/*" kafka.tools.StorageTool format \
      -t "$cluster_id" -c "$dir/server.properties" > "$dir/format.log" 2>&1 \
    || { cat "$dir/format.log" >&2; die "formatting KRaft storage failed"; }
  launch
}

launch() {
  [[ -f "$dir/kafka.log" ]] && mv "$dir/kafka.log" "$dir/kafka.previous.log"
  setsid java "${java_opts[@]}" -cp "$jars/*" kafka.Kafka "$dir/server.properties" \
      > "$dir/kafka.log" 2>&1 < /dev/null &
  echo $! > "$dir/kafka.pid"
  local waited=0
  until grep -q "Kafka Server started" "$dir/kafka.log" 2>/dev/null \
        && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    if ! running; then
      log_tail
      die "the broker exited during start-up"
    fi
    if (( waited >= start_timeout * 10 )); then
      log_tail
      stop
      die "the broker did not accept connections on 127.0.0.1:$port within ${start_timeout}s"
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  echo "127.0.0.1:$port" > "$dir/bootstrap"
  cat "$dir/bootstrap"
}

stop() {
  if ! running; then
    rm -f "$dir/kafka.pid"
    return 0
  fi
  local pid
  pid="$(cat "$dir/kafka.pid")"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  rm -f "$dir/kafka.pid"
}

command="${1:-}"
[[ -n "$command" ]] || die "usage: kafka.sh fetch|start|stop|status [--dir DIR] [--port PORT]"
shift
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) dir="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --fresh) fresh=1; shift ;;
    *) die "unknown option $1" ;;
  esac
done
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

case "$command" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  status) running ;;
  *) die "unknown command $command (fetch|start|stop|status)" ;;
esac
