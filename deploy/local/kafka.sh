#!/usr/bin/env bash
# Local Apache Kafka (KRaft) on loopback for tests, the demo and benchmarks: one combined broker/controller,
# or a cluster of combined brokers/controllers with a SASL_SSL (SCRAM-SHA-512) listener that fault tests can
# kill -9 and restart one broker at a time.
#
#   deploy/local/kafka.sh fetch                 resolve the Kafka jars from Maven Central into the cache
#   deploy/local/kafka.sh start [--dir D] [--port P] [--fresh]
#                                               format KRaft storage, start, wait until it accepts clients;
#                                               prints the bootstrap address (also written to D/bootstrap).
#                                               A broker started before in D restarts with its data and
#                                               ports; --fresh wipes them first
#   deploy/local/kafka.sh start --brokers N [--dir D] [--fresh]
#                                               a cluster of N (>= 3) brokers, each its own process, data
#                                               folder (D/broker-ID/) and ports; node ids 1..N, all of them
#                                               KRaft voters. Listeners: PLAINTEXT (also between brokers),
#                                               SASL_SSL with SCRAM-SHA-512, CONTROLLER. Prints the PLAINTEXT
#                                               bootstrap list (also in D/bootstrap); the SASL_SSL one is in
#                                               D/sasl_bootstrap, the CA certificate (PEM) in D/ca.pem, the
#                                               SCRAM user and password in D/credentials (mode 0600, never
#                                               printed). Defaults for fault tests: replication factor 3,
#                                               min.insync.replicas 2, no unclean election, a dead broker
#                                               fenced after 4 s; __consumer_offsets is created at the first
#                                               start. A cluster started before in D restarts as it was
#   deploy/local/kafka.sh stop [--dir D]        stop the broker(s) started in D
#   deploy/local/kafka.sh status [--dir D]      exit 0 when the broker (every broker of a cluster) in D runs;
#                                               for a cluster, one line per broker
#   deploy/local/kafka.sh kill ID [--dir D]     SIGKILL broker ID of the cluster in D (no clean shutdown)
#   deploy/local/kafka.sh start-broker ID [--dir D]
#                                               start broker ID again with its data and ports and wait until it
#                                               accepts connections
#   deploy/local/kafka.sh leader TOPIC PARTITION [--dir D]
#                                               print the id of the broker leading that partition
#
# Ports default to free ones chosen by the OS. The heap is small (KAFKA_HEAP_OPTS, default
# -Xms128m -Xmx768m for one broker, -Xms64m -Xmx320m for each broker of a cluster) because the machine is
# shared with the tests. KAFKA_START_TIMEOUT bounds every wait for a start (default 90 s, 150 s for a cluster).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${RUNSTREAM_CACHE:-$repo/.cache}"
kafka_version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/pom.xml")"
jars="$cache/kafka-$kafka_version/libs"
dir="$cache/kafka-run"
port=""
fresh=""
brokers=""
start_timeout="${KAFKA_START_TIMEOUT:-90}"
scram_user="runstream"

die() { echo "kafka.sh: $*" >&2; exit 1; }

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# N distinct free ports: every socket stays bound until all are chosen, so none is handed out twice.
free_ports() {
  python3 - "$1" <<'PY'
import socket
import sys

sockets = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in sockets))
for s in sockets:
    s.close()
PY
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

# ---------------------------------------------------------------------------------------------------------
# Cluster mode. D/brokers holds the broker count once every broker's storage is formatted; it is what tells
# a cluster folder from a single-broker one. Each broker N lives in D/broker-N/ (server.properties, data/,
# kafka.log, kafka.pid); the TLS material in D/tls/ (mode 0700), the CA certificate for clients in D/ca.pem.

is_cluster() { [[ -f "$dir/brokers" ]]; }

cluster_size() { cat "$dir/brokers"; }

broker_ids() { seq 1 "$(cluster_size)"; }

broker_dir() { echo "$dir/broker-$1"; }

# The pid in broker-N/kafka.pid is that broker only while it is alive, not a zombie, and still runs
# broker-N's server.properties (a recycled pid belongs to someone else and must never be signalled).
broker_pid() {
  local bdir pid
  bdir="$(broker_dir "$1")"
  [[ -f "$bdir/kafka.pid" ]] || return 1
  pid="$(cat "$bdir/kafka.pid")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [[ -r "/proc/$pid/cmdline" ]] || return 1
  tr '\0' '\n' < "/proc/$pid/cmdline" 2>/dev/null | grep -qxF "$bdir/server.properties" || return 1
  echo "$pid"
}

broker_running() { broker_pid "$1" >/dev/null; }

# A broker this call launched is still starting while its pid lives and is not a zombie. Its cmdline is
# not yet the broker's until the background shell has exec'd java (a window a loaded machine widens), so
# start-up cannot use broker_running; the pid is our own unreaped child, so it cannot be recycled.
launched_alive() {
  local pid state
  pid="$(cat "$(broker_dir "$1")/kafka.pid" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  state="$(sed -n 's/^[0-9]* (.*) \([A-Za-z]\) .*$/\1/p' "/proc/$pid/stat" 2>/dev/null)" || return 1
  [[ -n "$state" && "$state" != Z && "$state" != X ]]
}

broker_port() {
  # broker_port ID LISTENER: the port of that listener from the broker's server.properties
  sed -n "s|^listeners=.*$2://127.0.0.1:\([0-9]*\).*$|\1|p" "$(broker_dir "$1")/server.properties"
}

check_broker_id() {
  [[ "$1" =~ ^[0-9]+$ ]] || die "broker id must be a number, got '$1'"
  is_cluster || die "no cluster in $dir (start one with: kafka.sh start --brokers 3 --dir $dir)"
  (( $1 >= 1 && $1 <= $(cluster_size) )) || die "broker id $1 is not in this cluster (1..$(cluster_size))"
}

cluster_log_tails() {
  local id
  for id in $(broker_ids); do
    echo "---- last lines of $(broker_dir "$id")/kafka.log (broker $id) ----" >&2
    tail -n 40 "$(broker_dir "$id")/kafka.log" >&2 2>/dev/null || echo "(no log)" >&2
  done
}

cluster_java_opts() {
  cluster_java=(${KAFKA_HEAP_OPTS:--Xms64m -Xmx320m} -XX:+UseG1GC -XX:ParallelGCThreads=1 -XX:ConcGCThreads=1
                -XX:TieredStopAtLevel=1 -Djava.awt.headless=true -Dlog4j2.configurationFile="$here/log4j2.yaml")
}

# A CA and one broker certificate (SAN 127.0.0.1 and localhost) in a PKCS#12 key store for all brokers.
make_tls() {
  local tls="$dir/tls"
  rm -rf "$tls"
  mkdir -p "$tls"
  chmod 700 "$tls"
  local store_password
  store_password="$(openssl rand -hex 24)"
  (
    cd "$tls"
    umask 077
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 -keyout ca.key -out ca.pem \
        -subj "/CN=runstream local test CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
    openssl req -newkey rsa:2048 -nodes -sha256 -keyout broker.key -out broker.csr -subj "/CN=localhost"
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n' \
        > broker.ext
    openssl x509 -req -sha256 -days 3650 -in broker.csr -CA ca.pem -CAkey ca.key \
        -set_serial "0x$(openssl rand -hex 16)" -extfile broker.ext -out broker.pem
    printf '%s' "$store_password" > store.password
    openssl pkcs12 -export -in broker.pem -inkey broker.key -certfile ca.pem -name broker \
        -out broker.p12 -passout file:store.password
  ) > "$dir/tls.log" 2>&1 || { cat "$dir/tls.log" >&2; die "making the TLS certificates with openssl failed"; }
  cp "$tls/ca.pem" "$dir/ca.pem"
  chmod 644 "$dir/ca.pem"
}

write_broker_properties() {
  # write_broker_properties ID PLAIN_PORT SASL_PORT CONTROLLER_PORT VOTERS
  local id="$1" plain="$2" sasl="$3" controller="$4" voters="$5" bdir store_password
  bdir="$(broker_dir "$id")"
  store_password="$(cat "$dir/tls/store.password")"
  mkdir -p "$bdir/data"
  (umask 077; cat > "$bdir/server.properties") <<PROPS
process.roles=broker,controller
node.id=$id
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$plain,SASL_SSL://127.0.0.1:$sasl,CONTROLLER://127.0.0.1:$controller
advertised.listeners=PLAINTEXT://127.0.0.1:$plain,SASL_SSL://127.0.0.1:$sasl
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PKCS12
ssl.keystore.location=$dir/tls/broker.p12
ssl.keystore.password=$store_password
ssl.key.password=$store_password
ssl.client.auth=none
log.dirs=$bdir/data
num.partitions=3
default.replication.factor=3
min.insync.replicas=2
unclean.leader.election.enable=false
offsets.topic.replication.factor=3
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
message.max.bytes=16777216
num.network.threads=2
num.io.threads=2
num.replica.fetchers=1
background.threads=2
log.cleaner.threads=1
broker.heartbeat.interval.ms=500
broker.session.timeout.ms=4000
replica.lag.time.max.ms=10000
PROPS
}

cluster_format() {
  local n="$brokers"
  (( n >= 3 )) || die "--brokers must be 1 (one broker) or at least 3 (a cluster), got $n"
  local id
  rm -rf "$dir"/broker-* "$dir/tls" "$dir/ca.pem" "$dir/credentials" "$dir/bootstrap" "$dir/sasl_bootstrap"
  make_tls
  local ports
  read -r -a ports <<< "$(free_ports $((3 * n)))"
  local voters=""
  for id in $(seq 1 "$n"); do
    voters+="${voters:+,}$id@127.0.0.1:${ports[$((3 * (id - 1) + 2))]}"
  done
  for id in $(seq 1 "$n"); do
    write_broker_properties "$id" "${ports[$((3 * (id - 1)))]}" "${ports[$((3 * (id - 1) + 1))]}" \
        "${ports[$((3 * (id - 1) + 2))]}" "$voters"
  done
  # The SCRAM password: random, only ever in D/credentials (0600) and in the format command's arguments.
  local password
  password="$(openssl rand -hex 24)"
  (umask 077; printf 'username=%s\npassword=%s\n' "$scram_user" "$password" > "$dir/credentials")
  chmod 600 "$dir/credentials"
  local cluster_id
  cluster_id="$(java -cp "$jars/*" kafka.tools.StorageTool random-uuid)" || die "StorageTool random-uuid failed"
  # The brokers' storage is formatted in parallel (one JVM each): about a third of the start-up time.
  local formats=()
  for id in $(seq 1 "$n"); do
    java "${cluster_java[@]}" -cp "$jars/*" kafka.tools.StorageTool format -t "$cluster_id" \
        -c "$(broker_dir "$id")/server.properties" \
        --add-scram "SCRAM-SHA-512=[name=$scram_user,password=$password]" \
        > "$(broker_dir "$id")/format.log" 2>&1 &
    formats+=("$!")
  done
  for id in $(seq 1 "$n"); do
    wait "${formats[$((id - 1))]}" \
      || { cat "$(broker_dir "$id")/format.log" >&2; die "formatting KRaft storage of broker $id failed"; }
  done
  echo "$n" > "$dir/brokers"
}

launch_broker() {
  local id="$1" bdir
  bdir="$(broker_dir "$id")"
  [[ -f "$bdir/kafka.log" ]] && mv "$bdir/kafka.log" "$bdir/kafka.previous.log"
  setsid java "${cluster_java[@]}" -cp "$jars/*" kafka.Kafka "$bdir/server.properties" \
      > "$bdir/kafka.log" 2>&1 < /dev/null &
  echo $! > "$bdir/kafka.pid"
}

broker_ready() {
  local id="$1"
  grep -q "Kafka Server started" "$(broker_dir "$id")/kafka.log" 2>/dev/null \
    && (exec 3<>"/dev/tcp/127.0.0.1/$(broker_port "$id" PLAINTEXT)") 2>/dev/null \
    && (exec 3<>"/dev/tcp/127.0.0.1/$(broker_port "$id" SASL_SSL)") 2>/dev/null
}

# Wait (bounded) until every broker named accepts connections; on failure print every broker's log tail,
# stop the ones this call started, and fail.
wait_brokers() {
  local timeout="$1" waited=0 id pending
  shift
  while true; do
    pending=""
    for id in "$@"; do
      if ! launched_alive "$id"; then
        cluster_log_tails
        for started in "$@"; do stop_broker "$started"; done
        die "broker $id exited during start-up"
      fi
      broker_ready "$id" || pending+=" $id"
    done
    [[ -z "$pending" ]] && return 0
    if (( waited >= timeout * 10 )); then
      cluster_log_tails
      for started in "$@"; do stop_broker "$started"; done
      die "broker(s)$pending did not accept connections within ${timeout}s"
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
}

write_bootstraps() {
  local id plain="" sasl=""
  for id in $(broker_ids); do
    plain+="${plain:+,}127.0.0.1:$(broker_port "$id" PLAINTEXT)"
    sasl+="${sasl:+,}127.0.0.1:$(broker_port "$id" SASL_SSL)"
  done
  echo "$plain" > "$dir/bootstrap"
  echo "$sasl" > "$dir/sasl_bootstrap"
}

cluster_start() {
  fetch
  cluster_java_opts
  start_timeout="${KAFKA_START_TIMEOUT:-150}"
  if [[ -n "$fresh" ]]; then
    cluster_stop
    rm -rf "$dir"/broker-* "$dir/tls" "$dir/ca.pem" "$dir/credentials" "$dir/brokers" "$dir/bootstrap" \
        "$dir/sasl_bootstrap"
  fi
  if [[ -f "$dir/server.properties" ]] && ! is_cluster; then
    die "$dir holds a single broker; use another --dir or --fresh"
  fi
  if is_cluster && [[ -n "$brokers" && "$brokers" != "$(cluster_size)" ]]; then
    die "$dir holds a cluster of $(cluster_size) brokers, not $brokers; use --fresh to make a new one"
  fi
  local formatted=""
  if ! is_cluster; then
    cluster_format
    formatted=1
  fi
  local id started=()
  for id in $(broker_ids); do
    if ! broker_running "$id"; then
      launch_broker "$id"
      started+=("$id")
    fi
  done
  if (( ${#started[@]} > 0 )); then
    wait_brokers "$start_timeout" "${started[@]}"
  fi
  write_bootstraps
  if [[ -n "$formatted" ]]; then
    create_offsets_topic || { cluster_log_tails; cluster_stop; die "the new cluster did not create __consumer_offsets"; }
  fi
  cat "$dir/bootstrap"
}

# __consumer_offsets (rf 3) is made when a group coordinator is first looked up. Made now, while every broker
# runs: a fault test that kills a broker before its first consumer group would otherwise find no coordinator
# (three replicas cannot be placed on two brokers) and stall.
create_offsets_topic() {
  local python="$repo/.venv/bin/python"
  [[ -x "$python" ]] || python=python3
  "$python" - "$(cat "$dir/bootstrap")" <<'PY'
import sys
import time

from confluent_kafka.admin import AdminClient

admin = AdminClient({"bootstrap.servers": sys.argv[1], "log_level": 0})
deadline = time.monotonic() + 60
for future in admin.describe_consumer_groups(["runstream-kafka-sh-warm-up"]).values():
    try:
        future.result(30)
    except Exception:  # the answer does not matter: the coordinator look-up creates the topic
        pass
while time.monotonic() < deadline:
    found = admin.list_topics(timeout=5).topics.get("__consumer_offsets")
    if found is not None and found.error is None and found.partitions and all(
        state.leader >= 0 and len(state.isrs) == len(state.replicas) for state in found.partitions.values()
    ):
        sys.exit(0)
    time.sleep(0.2)
print("kafka.sh: __consumer_offsets has no leader for every partition after 60 s", file=sys.stderr)
sys.exit(1)
PY
}

start_broker() {
  local id="$1"
  check_broker_id "$id"
  fetch
  cluster_java_opts
  start_timeout="${KAFKA_START_TIMEOUT:-150}"
  if ! broker_running "$id"; then
    launch_broker "$id"
  fi
  wait_brokers "$start_timeout" "$id"
}

kill_broker() {
  local id="$1" pid
  check_broker_id "$id"
  pid="$(broker_pid "$id")" || die "broker $id is not running"
  kill -KILL "$pid"
  # Return only once it is gone, so that the caller's next step sees a dead broker.
  for _ in $(seq 1 100); do
    broker_running "$id" || return 0
    sleep 0.05
  done
  die "broker $id (pid $pid) still runs 5 s after SIGKILL"
}

stop_broker() {
  local id="$1" pid
  pid="$(broker_pid "$id")" || { rm -f "$(broker_dir "$id")/kafka.pid"; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 200); do
    broker_running "$id" || break
    sleep 0.1
  done
  broker_running "$id" && kill -KILL "$pid" 2>/dev/null || true
  rm -f "$(broker_dir "$id")/kafka.pid"
}

# All brokers get SIGTERM at once (a broker stopped last cannot finish a controlled shutdown without a
# quorum); whatever still runs after 20 s gets SIGKILL.
cluster_stop() {
  is_cluster || return 0
  local id pid pids=()
  for id in $(broker_ids); do
    if pid="$(broker_pid "$id")"; then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$id")
    fi
  done
  for _ in $(seq 1 200); do
    local alive=""
    for id in "${pids[@]}"; do broker_running "$id" && alive=1; done
    [[ -z "$alive" ]] && break
    sleep 0.1
  done
  for id in "${pids[@]}"; do
    pid="$(broker_pid "$id")" && kill -KILL "$pid" 2>/dev/null || true
  done
  for id in $(broker_ids); do rm -f "$(broker_dir "$id")/kafka.pid"; done
}

cluster_status() {
  local id pid all=0
  for id in $(broker_ids); do
    if pid="$(broker_pid "$id")"; then
      echo "broker $id: running (pid $pid, 127.0.0.1:$(broker_port "$id" PLAINTEXT))"
    else
      echo "broker $id: stopped"
      all=1
    fi
  done
  return "$all"
}

leader() {
  local topic="$1" partition="$2"
  [[ "$partition" =~ ^[0-9]+$ ]] || die "partition must be a number, got '$partition'"
  [[ -f "$dir/bootstrap" ]] || die "no bootstrap address in $dir: start Kafka first"
  local python="$repo/.venv/bin/python"
  [[ -x "$python" ]] || python=python3
  "$python" - "$(cat "$dir/bootstrap")" "$topic" "$partition" <<'PY'
"""Print the leader of one partition, as the cluster's metadata names it; wait (bounded) while there is none."""
import sys
import time

from confluent_kafka.admin import AdminClient

bootstrap, topic, partition = sys.argv[1], sys.argv[2], int(sys.argv[3])
# log_level 0: a killed broker's refused connections are expected here, not worth a line on stderr.
admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
deadline = time.monotonic() + 30
problem = "no answer"
while time.monotonic() < deadline:
    try:
        # Every topic's metadata: asking for one topic by name could create it on the broker.
        metadata = admin.list_topics(timeout=5)
    except Exception as error:  # the cluster may be electing: retried until the deadline
        problem = str(error)
        time.sleep(0.2)
        continue
    found = metadata.topics.get(topic)
    if found is None or found.error is not None:
        problem = f"topic {topic!r}: {found.error if found else 'not in the metadata'}"
    elif partition not in found.partitions:
        print(f"kafka.sh: leader: topic {topic!r} has no partition {partition} (it has {len(found.partitions)})",
              file=sys.stderr)
        sys.exit(1)
    elif found.partitions[partition].leader >= 0:
        print(found.partitions[partition].leader)
        sys.exit(0)
    else:
        problem = f"partition {topic}-{partition} has no leader"
    time.sleep(0.2)
print(f"kafka.sh: leader: {problem} (after 30 s)", file=sys.stderr)
sys.exit(1)
PY
}

command="${1:-}"
[[ -n "$command" ]] || die "usage: kafka.sh fetch|start|stop|status|kill|start-broker|leader [ARGS] [--dir DIR] [--port PORT] [--brokers N] [--fresh]"
shift
args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) dir="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --brokers) brokers="$2"; shift 2 ;;
    --fresh) fresh=1; shift ;;
    -*) die "unknown option $1" ;;
    *) args+=("$1"); shift ;;
  esac
done
expect_args() {
  (( ${#args[@]} == $1 )) || die "$command takes $1 argument(s): $2"
}
if [[ -n "$brokers" ]]; then
  [[ "$brokers" =~ ^[0-9]+$ ]] || die "--brokers must be a number, got '$brokers'"
  [[ "$command" == start ]] || die "--brokers goes with start"
  [[ -z "$port" || "$brokers" == 1 ]] || die "--port is for one broker; a cluster takes OS-chosen ports"
fi
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

case "$command" in
  fetch) expect_args 0 ""; fetch ;;
  start)
    expect_args 0 ""
    if [[ ( -n "$brokers" && "$brokers" != 1 ) || ( -z "$brokers" && -f "$dir/brokers" ) ]]; then
      cluster_start
    else
      ! is_cluster || die "$dir holds a cluster of $(cluster_size) brokers; use another --dir"
      start
    fi ;;
  stop) expect_args 0 ""; if is_cluster; then cluster_stop; else stop; fi ;;
  status) expect_args 0 ""; if is_cluster; then cluster_status; else running; fi ;;
  kill) expect_args 1 "BROKER_ID"; kill_broker "${args[0]}" ;;
  start-broker) expect_args 1 "BROKER_ID"; start_broker "${args[0]}" ;;
  leader) expect_args 2 "TOPIC PARTITION"; leader "${args[0]}" "${args[1]}" ;;
  *) die "unknown command $command (fetch|start|stop|status|kill|start-broker|leader)" ;;
esac
