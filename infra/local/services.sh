#!/usr/bin/env bash
# Real services on loopback for one machine: start, check and stop them by recorded PID.
#
#   infra/local/services.sh up     [SERVICE...]   start what is not running (installing what is missing), wait until healthy
#   infra/local/services.sh down   [SERVICE...]   stop what this script started, by PID (process group)
#   infra/local/services.sh status [SERVICE...]
#   infra/local/services.sh env                   the FUSION_*/PREFECT_* variables that point Fusion at them
#   infra/local/services.sh tools                 install the command-line clients the tests use (kcat)
#
# SERVICES: kafka redis postgres prefect prefect-worker mlflow, and jaeger pushgateway prometheus (`up` alone
# starts the first six; `up prefect` brings up postgres, its database, too). State, logs and PIDs live in $FUSION_SERVICES_DIR (default
# .fusion/services). Ports: FUSION_KAFKA_PORT (9092; controller +1), FUSION_REDIS_PORT (6379),
# FUSION_POSTGRES_PORT (5433), FUSION_PREFECT_PORT (4200), FUSION_MLFLOW_PORT (5000), FUSION_JAEGER_PORT
# (16686, query API and UI; its gRPC -1), FUSION_JAEGER_OTLP_PORT (4318, OTLP/HTTP; OTLP/gRPC -1),
# FUSION_PUSHGATEWAY_PORT (9091), FUSION_PROMETHEUS_PORT (9090).
#
# Logs: Fusion's processes here (the Prefect server and worker, and the flow runs the worker starts) write
# one JSON object per line (FUSION_LOG_FORMAT, default json here: they write to files). When jaeger is
# running, the worker's runs export their spans to it (OTEL_EXPORTER_OTLP_ENDPOINT); when pushgateway is,
# they push their metrics there (FUSION_PUSHGATEWAY_URL). Prometheus scrapes the pushgateway and the
# targets in $STATE/prometheus/targets/*.json (file discovery: serving :8000 and a trigger's :9464 by
# default; add a file to add a target) and evaluates infra/prometheus/alerts.yml.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# FUSION_SERVICES_PROFILE=secure: Kafka on SASL_SSL (SCRAM-SHA-512) and Redis on TLS with an ACL user, both
# with a certificate from a local CA this script makes, passwords generated into $STATE/secrets (0600);
# `env` then prints references to those files, never the passwords. Its own state folder by default.
PROFILE=${FUSION_SERVICES_PROFILE:-plain}
case $PROFILE in plain) default_state=$ROOT/.fusion/services ;; secure) default_state=$ROOT/.fusion/services-secure ;;
    *) printf 'error: FUSION_SERVICES_PROFILE is plain or secure, not %s\n' "$PROFILE" >&2; exit 1 ;; esac
STATE=${FUSION_SERVICES_DIR:-$default_state}
VENV=${VENV:-$ROOT/.venv}
KAFKA_PORT=${FUSION_KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=$((KAFKA_PORT + 1))
REDIS_PORT=${FUSION_REDIS_PORT:-6379}
POSTGRES_PORT=${FUSION_POSTGRES_PORT:-5433} # 5432 is left to a Postgres the machine may run already
PREFECT_PORT=${FUSION_PREFECT_PORT:-4200}
MLFLOW_PORT=${FUSION_MLFLOW_PORT:-5000}
JAEGER_PORT=${FUSION_JAEGER_PORT:-16686}
JAEGER_OTLP_PORT=${FUSION_JAEGER_OTLP_PORT:-4318}
PUSHGATEWAY_PORT=${FUSION_PUSHGATEWAY_PORT:-9091}
PROMETHEUS_PORT=${FUSION_PROMETHEUS_PORT:-9090}
WORK_POOL=${FUSION_WORK_POOL:-fusion-local}
ALL=(kafka redis postgres prefect prefect-worker mlflow)
KNOWN=("${ALL[@]}" jaeger pushgateway prometheus)

log() { printf '%s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

pid_of() { cat "$STATE/$1/pid" 2>/dev/null || true; }
running() { local pid; pid=$(pid_of "$1"); [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
http_ok() { curl -fs -o /dev/null --max-time 2 "$1"; }

# wait_until NAME SECONDS COMMAND...: poll until COMMAND succeeds; fail with the log tail if the process dies.
wait_until() {
    local name=$1 seconds=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@"; do
        if ! running "$name"; then
            tail -n 30 "$STATE/$name/log" >&2 || true
            die "$name exited during start-up (log: $STATE/$name/log)"
        fi
        ((SECONDS < deadline)) || { tail -n 30 "$STATE/$name/log" >&2 || true; die "$name not healthy after ${seconds}s"; }
        sleep 0.3
    done
}

# launch NAME COMMAND...: start in its own process group (so `down` stops its children too), record the PID.
launch() {
    local name=$1
    shift
    mkdir -p "$STATE/$name"
    # emptied here, not by the background child's redirect: a readiness check that greps the log must not
    # find the line a previous run of the service left there before the child gets to truncate it
    : >"$STATE/$name/log"
    setsid "$@" >>"$STATE/$name/log" 2>&1 < /dev/null &
    echo $! >"$STATE/$name/pid"
}

secure() { [[ $PROFILE == secure ]]; }

# The secure profile's local CA, the server certificate for 127.0.0.1 it signs, and generated passwords.
ensure_secrets() {
    local tls=$STATE/tls secrets=$STATE/secrets
    mkdir -p "$tls" "$secrets"
    chmod 700 "$tls" "$secrets"
    if [[ ! -s $tls/server.pem ]]; then
        command -v openssl >/dev/null || apt_install openssl
        openssl req -x509 -newkey rsa:2048 -nodes -keyout "$tls/ca.key" -out "$tls/ca.crt" -days 825 \
            -subj "/CN=Fusion local CA" 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -keyout "$tls/server.key" -out "$tls/server.csr" -subj "/CN=127.0.0.1" 2>/dev/null
        openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" -CAcreateserial -days 825 \
            -out "$tls/server.crt" -extfile <(printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n') 2>/dev/null
        openssl pkcs8 -topk8 -nocrypt -in "$tls/server.key" -out "$tls/server.pk8" # Kafka's PEM keystore: PKCS#8
        cat "$tls/server.pk8" "$tls/server.crt" >"$tls/server.pem"
        chmod 600 "$tls/ca.key" "$tls/server.key" "$tls/server.pk8" "$tls/server.pem"
        chmod 644 "$tls/ca.crt"
    fi
    local name
    for name in redis-password kafka-password kafka-admin-password; do
        [[ -s $secrets/$name ]] || (umask 077; openssl rand -hex 24 >"$secrets/$name")
    done
}

# The variables that point a Fusion process at the secure profile's services: references to the secret
# files, never the values (KEY=VALUE per line).
secure_env() {
    secure || return 0
    echo "FUSION_EVENTS__SECURITY__PROTOCOL=SASL_SSL"
    echo "FUSION_EVENTS__SECURITY__USERNAME=fusion"
    echo "FUSION_EVENTS__SECURITY__PASSWORD=file:$STATE/secrets/kafka-password"
    echo "FUSION_EVENTS__SECURITY__SSL_CAFILE=$STATE/tls/ca.crt"
    echo "FUSION_REDIS_URL=file:$STATE/secrets/redis-url"
}

apt_install() {
    command -v apt-get >/dev/null || die "need Debian's $* and apt-get is not here"
    local sudo=""
    [[ $(id -u) -eq 0 ]] || sudo="sudo"
    if [[ ! -f "$STATE/.apt-updated" ]]; then
        $sudo apt-get update -qq && mkdir -p "$STATE" && touch "$STATE/.apt-updated"
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

require_venv() { [[ -x $VENV/bin/python ]] || die "no virtual environment at $VENV: run 'make setup'"; }

# --- kafka: a single KRaft node (broker + controller) from Maven Central jars --------------------
install_kafka() {
    command -v java >/dev/null || apt_install openjdk-17-jre-headless
    local lib=$STATE/kafka/lib pom=$ROOT/infra/local/kafka/pom.xml
    if [[ ! -f $lib/.complete || $pom -nt $lib/.complete ]]; then
        command -v mvn >/dev/null || apt_install maven
        log "kafka: fetching jars from Maven Central"
        rm -rf "$lib"
        mvn -q -B -Dstyle.color=never -f "$pom" dependency:copy-dependencies -DoutputDirectory="$lib" -DincludeScope=runtime
        touch "$lib/.complete"
    fi
}

start_kafka() {
    local dir=$STATE/kafka
    mkdir -p "$dir/data"
    local listener=PLAINTEXT scram=()
    if secure; then
        ensure_secrets
        listener=SASL_SSL
        scram=(--add-scram "SCRAM-SHA-512=[name=admin,password=$(cat "$STATE/secrets/kafka-admin-password")]"
            --add-scram "SCRAM-SHA-512=[name=fusion,password=$(cat "$STATE/secrets/kafka-password")]")
    fi
    (umask 077; cat >"$dir/server.properties") <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=$listener://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=$listener://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=$listener
listener.security.protocol.map=CONTROLLER:PLAINTEXT,$listener:$listener
log.dirs=$dir/data
num.partitions=3
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
EOF
    if secure; then # the controller listener stays on loopback in plain text: the broker's only peer is itself
        cat >>"$dir/server.properties" <<EOF
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$(cat "$STATE/secrets/kafka-admin-password")";
ssl.keystore.type=PEM
ssl.keystore.location=$STATE/tls/server.pem
ssl.truststore.type=PEM
ssl.truststore.location=$STATE/tls/ca.crt
EOF
    fi
    local java=(java -Xms128m -Xmx512m -XX:+UseG1GC -XX:TieredStopAtLevel=1
        "-Dlog4j2.configurationFile=$ROOT/infra/local/kafka/log4j2.properties" -cp "$dir/lib/*")
    if [[ ! -f $dir/data/meta.properties ]]; then
        local cluster_id
        cluster_id=$("${java[@]}" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)
        "${java[@]}" kafka.tools.StorageTool format -t "$cluster_id" -c "$dir/server.properties" "${scram[@]}" \
            >"$dir/format.log" 2>&1 ||
            { cat "$dir/format.log" >&2; die "kafka: formatting the storage failed"; }
    fi
    launch kafka "${java[@]}" kafka.Kafka "$dir/server.properties"
    wait_until kafka 90 grep -q "Kafka Server started" "$dir/log"
}

# --- redis: Debian's redis-server, no persistence ----------------------------------------------------
redis_ping() {
    if secure; then
        REDISCLI_AUTH=$(cat "$STATE/secrets/redis-password") redis-cli --tls --cacert "$STATE/tls/ca.crt" \
            --user fusion -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG
    else
        redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG
    fi
}
install_redis() { command -v redis-server >/dev/null || apt_install redis-server; }
start_redis() {
    mkdir -p "$STATE/redis"
    local args=(--bind 127.0.0.1 --save "" --appendonly no --dir "$STATE/redis" --daemonize no)
    if secure; then
        ensure_secrets
        # the default user off: every client authenticates as `fusion`, over TLS only
        (umask 077; printf 'user default off\nuser fusion on >%s ~* &* +@all\n' \
            "$(cat "$STATE/secrets/redis-password")" >"$STATE/redis/users.acl")
        (umask 077; printf 'rediss://fusion:%s@127.0.0.1:%s/0?ssl_ca_certs=%s\n' "$(cat "$STATE/secrets/redis-password")" \
            "$REDIS_PORT" "$STATE/tls/ca.crt" >"$STATE/secrets/redis-url")
        args+=(--port 0 --tls-port "$REDIS_PORT" --tls-cert-file "$STATE/tls/server.crt" --tls-key-file "$STATE/tls/server.key"
            --tls-ca-cert-file "$STATE/tls/ca.crt" --tls-auth-clients no --aclfile "$STATE/redis/users.acl")
    else
        args+=(--port "$REDIS_PORT")
    fi
    launch redis redis-server "${args[@]}"
    wait_until redis 30 redis_ping
}

# --- postgres: the Prefect server's database (Debian's postgresql), loopback only -------------------
# Prefect on sqlite serialises every write behind one lock: its event persister and late-runs service then
# stall run creation for seconds at a time (docs/BENCHMARKS.md, Events). PostgreSQL is what Prefect runs on
# in production, and starts here in about a second.
pg_bin() { local d; d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1); echo "${d:-/nonexistent}"; }
# As root, the server runs as the `postgres` user the Debian package creates (postgres refuses root);
# setpriv execs in place, so the recorded PID is the postmaster's own.
AS_PG=()
[[ $(id -u) -ne 0 ]] || AS_PG=(setpriv --reuid=postgres --regid=postgres --init-groups)
as_pg() { "${AS_PG[@]}" "$@"; }
pg_ready() { "$(pg_bin)/pg_isready" -q -h 127.0.0.1 -p "$POSTGRES_PORT"; }
install_postgres() { [[ -x $(pg_bin)/postgres ]] || apt_install postgresql; }
# Where the cluster lives: under $STATE, unless the `postgres` user cannot reach it there (a checkout
# under a root-only home): then a folder of its own under /var/lib, one per $STATE.
pg_dir() {
    local dir=$STATE/postgres/cluster
    mkdir -p "$dir"
    [[ $(id -u) -eq 0 ]] || { echo "$dir"; return; }
    chown postgres "$dir"
    if ! as_pg test -w "$dir"; then
        dir=/var/lib/fusion-postgres/$(printf '%s' "$STATE" | cksum | cut -d' ' -f1)
        mkdir -p "$dir" && chown postgres "$dir"
    fi
    echo "$dir"
}

start_postgres() {
    local dir bin
    bin=$(pg_bin)
    dir=$(pg_dir)
    if [[ ! -f $dir/data/PG_VERSION ]]; then
        as_pg "$bin/initdb" -D "$dir/data" -U fusion -A trust --no-sync >"$dir/initdb.log" 2>&1 ||
            { cat "$dir/initdb.log" >&2; die "postgres: initdb failed"; }
    fi
    # Trust on loopback only; synchronous_commit=off may lose the last commits in a crash, never corrupts.
    launch postgres "${AS_PG[@]}" "$bin/postgres" -D "$dir/data" -p "$POSTGRES_PORT" -k "$dir" \
        -c listen_addresses=127.0.0.1 -c synchronous_commit=off
    wait_until postgres 60 pg_ready
    as_pg "$bin/psql" -q -h 127.0.0.1 -p "$POSTGRES_PORT" -U fusion -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = 'prefect'" | grep -q 1 ||
        as_pg "$bin/createdb" -h 127.0.0.1 -p "$POSTGRES_PORT" -U fusion prefect
}

# --- prefect: API server + UI, and a worker for a local process work pool --------------------------
install_prefect() { require_venv; }
PREFECT_ENV=(env "PREFECT_HOME=$STATE/prefect/home" "PREFECT_API_URL=http://127.0.0.1:$PREFECT_PORT/api"
    PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1)
# The variables that put a Fusion process's logs (and Prefect's, Dask's) in FUSION_LOG_FORMAT, as Fusion
# says (fusion/core/logs.py), and where spans go when jaeger runs.
observe_env() {
    FUSION_LOG_FORMAT=${FUSION_LOG_FORMAT:-json} "$VENV/bin/python" -m fusion.core.logs
    "$VENV/bin/python" -m fusion.core.tracing
    ! running jaeger || echo "OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$JAEGER_OTLP_PORT"
    ! running pushgateway || echo "FUSION_PUSHGATEWAY_URL=http://127.0.0.1:$PUSHGATEWAY_PORT"
    secure_env  # the worker's runs publish to the secure Kafka and write online features to the secure Redis
}
start_prefect() {
    up postgres # its database: a no-op when running
    mkdir -p "$STATE/prefect/home"
    local observe
    mapfile -t observe < <(observe_env)
    launch prefect "${PREFECT_ENV[@]}" "${observe[@]}" \
        "PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://fusion@127.0.0.1:$POSTGRES_PORT/prefect" \
        "$VENV/bin/prefect" server start --host 127.0.0.1 --port "$PREFECT_PORT"
    wait_until prefect 120 http_ok "http://127.0.0.1:$PREFECT_PORT/api/health"
}

install_prefect-worker() { require_venv; }
start_prefect-worker() {
    running prefect || http_ok "http://127.0.0.1:$PREFECT_PORT/api/health" || die "prefect-worker needs the prefect server: up prefect"
    "${PREFECT_ENV[@]}" "$VENV/bin/prefect" work-pool inspect "$WORK_POOL" >/dev/null 2>&1 ||
        "${PREFECT_ENV[@]}" "$VENV/bin/prefect" work-pool create "$WORK_POOL" --type process >/dev/null
    mkdir -p "$STATE/prefect-worker"
    local observe
    mapfile -t observe < <(observe_env)
    launch prefect-worker "${PREFECT_ENV[@]}" "${observe[@]}" "$VENV/bin/prefect" worker start --pool "$WORK_POOL" --type process \
        --name "fusion-local-worker"
    wait_until prefect-worker 60 grep -q "Worker 'fusion-local-worker' started" "$STATE/prefect-worker/log"
}

# --- mlflow: tracking server + UI over sqlite, artifacts served by the server -----------------------
install_mlflow() { require_venv; }
start_mlflow() {
    mkdir -p "$STATE/mlflow/artifacts"
    launch mlflow env MLFLOW_DISABLE_TELEMETRY=true "$VENV/bin/mlflow" server \
        --backend-store-uri "sqlite:///$STATE/mlflow/mlflow.db" --artifacts-destination "$STATE/mlflow/artifacts" \
        --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1
    wait_until mlflow 120 http_ok "http://127.0.0.1:$MLFLOW_PORT/health"
}

# --- jaeger: Jaeger v2 (OTLP in, traces in memory, query API), built from the Go module proxy ---------
# infra/local/jaeger/go.mod pins the version (its `tool` line); the binary is built once into $STATE.
install_jaeger() {
    local bin=$STATE/jaeger/bin/jaeger mod=$ROOT/infra/local/jaeger/go.mod
    [[ -x $bin && $bin -nt $mod ]] && return
    command -v go >/dev/null || die "jaeger is built with the Go toolchain (go >= 1.24): none on PATH"
    log "jaeger: building from the Go module proxy (a few minutes the first time)"
    mkdir -p "$STATE/jaeger/bin"
    (cd "$ROOT/infra/local/jaeger" && go build -o "$bin.tmp" github.com/jaegertracing/jaeger/cmd/jaeger) >&2 ||
        die "jaeger: go build failed"
    mv "$bin.tmp" "$bin"
}
start_jaeger() {
    launch jaeger env "JAEGER_QUERY_PORT=$JAEGER_PORT" "JAEGER_QUERY_GRPC_PORT=$((JAEGER_PORT - 1))" \
        "JAEGER_OTLP_HTTP_PORT=$JAEGER_OTLP_PORT" "JAEGER_OTLP_GRPC_PORT=$((JAEGER_OTLP_PORT - 1))" \
        "JAEGER_HEALTH_PORT=${FUSION_JAEGER_HEALTH_PORT:-13133}" \
        "$STATE/jaeger/bin/jaeger" "--config=file:$ROOT/infra/local/jaeger/config.yaml"
    wait_until jaeger 60 http_ok "http://127.0.0.1:$JAEGER_PORT/api/services"
}

# --- pushgateway, prometheus: Debian's packages; runs push to the gateway, Prometheus scrapes it --------
install_pushgateway() { command -v prometheus-pushgateway >/dev/null || apt_install --no-install-recommends prometheus-pushgateway; }
start_pushgateway() {
    mkdir -p "$STATE/pushgateway"
    launch pushgateway prometheus-pushgateway --web.listen-address="127.0.0.1:$PUSHGATEWAY_PORT"
    wait_until pushgateway 30 http_ok "http://127.0.0.1:$PUSHGATEWAY_PORT/-/ready"
}
install_prometheus() {
    { command -v prometheus && command -v promtool; } >/dev/null || apt_install --no-install-recommends prometheus
}
start_prometheus() {
    local dir=$STATE/prometheus
    mkdir -p "$dir/data" "$dir/targets"
    [[ -f $dir/targets/local.json ]] || cat >"$dir/targets/local.json" <<EOF
[{"targets": ["127.0.0.1:8000"], "labels": {"job": "fusion-serving"}},
 {"targets": ["127.0.0.1:9464"], "labels": {"job": "fusion-trigger"}}]
EOF
    cat >"$dir/prometheus.yml" <<EOF
global:
  scrape_interval: 5s
  evaluation_interval: 5s
rule_files: ["$ROOT/infra/prometheus/alerts.yml"]
scrape_configs:
  - job_name: pushgateway
    honor_labels: true  # a run's job and dataset labels, not the gateway's
    static_configs: [{targets: ["127.0.0.1:$PUSHGATEWAY_PORT"]}]
  - job_name: fusion
    file_sd_configs: [{files: ["$dir/targets/*.json"], refresh_interval: 5s}]
EOF
    promtool check config "$dir/prometheus.yml" >/dev/null || die "prometheus: invalid configuration"
    launch prometheus prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/data" \
        --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" --web.enable-lifecycle
    wait_until prometheus 60 http_ok "http://127.0.0.1:$PROMETHEUS_PORT/-/ready"
}

port_of() {
    case $1 in
        kafka) echo "$KAFKA_PORT" ;; redis) echo "$REDIS_PORT" ;; prefect) echo "$PREFECT_PORT" ;;
        postgres) echo "$POSTGRES_PORT" ;;
        mlflow) echo "$MLFLOW_PORT" ;; jaeger) echo "$JAEGER_PORT" ;;
        pushgateway) echo "$PUSHGATEWAY_PORT" ;; prometheus) echo "$PROMETHEUS_PORT" ;; *) echo "" ;;
    esac
}

url_of() {
    case $1 in
        kafka) echo "127.0.0.1:$KAFKA_PORT$(secure && echo " (SASL_SSL, SCRAM-SHA-512)")" ;;
        redis) if secure; then echo "rediss://fusion@127.0.0.1:$REDIS_PORT/0 (TLS, ACL user)"; else echo "redis://127.0.0.1:$REDIS_PORT/0"; fi ;;
        prefect) echo "http://127.0.0.1:$PREFECT_PORT (UI)" ;; prefect-worker) echo "work pool $WORK_POOL" ;;
        postgres) echo "postgresql://fusion@127.0.0.1:$POSTGRES_PORT/prefect" ;;
        mlflow) echo "http://127.0.0.1:$MLFLOW_PORT (UI)" ;;
        jaeger) echo "http://127.0.0.1:$JAEGER_PORT (query API), OTLP http://127.0.0.1:$JAEGER_OTLP_PORT" ;;
        pushgateway) echo "http://127.0.0.1:$PUSHGATEWAY_PORT" ;; prometheus) echo "http://127.0.0.1:$PROMETHEUS_PORT (UI)" ;;
    esac
}

up() {
    local name port
    for name in "$@"; do
        if running "$name"; then
            log "$name: running (pid $(pid_of "$name")) $(url_of "$name")"
            continue
        fi
        port=$(port_of "$name")
        [[ -z $port ]] || ! port_open "$port" || die "$name: port $port is taken by a process this script did not start"
        "install_$name"
        local started=$SECONDS
        "start_$name"
        log "$name: up in $((SECONDS - started))s (pid $(pid_of "$name")) $(url_of "$name")"
    done
}

down() {
    local name pid i
    for name in "$@"; do
        pid=$(pid_of "$name")
        if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
            # A Prefect worker shuts down promptly on SIGINT; SIGTERM leaves it waiting. For postgres SIGTERM
            # waits for every client to leave; SIGINT is its "fast" shutdown (clean, clients disconnected).
            local signal=TERM
            [[ $name == prefect-worker || $name == postgres ]] && signal=INT
            kill "-$signal" -- "-$pid" 2>/dev/null || kill "-$signal" "$pid"
            for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            kill -0 "$pid" 2>/dev/null && { kill -KILL -- "-$pid" 2>/dev/null || true; log "$name: killed"; }
            log "$name: stopped"
        fi
        rm -f "$STATE/$name/pid"
    done
}

status() {
    local name
    for name in "$@"; do
        if running "$name"; then log "$name: running (pid $(pid_of "$name")) $(url_of "$name")"; else log "$name: stopped"; fi
    done
}

environment() {
    cat <<EOF
export FUSION_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$KAFKA_PORT
$(secure && secure_env | sed 's/^/export /' || echo "export FUSION_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0")
export FUSION_MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT
export PREFECT_API_URL=http://127.0.0.1:$PREFECT_PORT/api
EOF
    ! running jaeger || echo "export OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$JAEGER_OTLP_PORT"
    ! running pushgateway || echo "export FUSION_PUSHGATEWAY_URL=http://127.0.0.1:$PUSHGATEWAY_PORT"
}

command=${1:-status}
shift || true
services=("$@")
# `up` alone starts the stack; `down`/`status` alone cover jaeger too
[[ ${#services[@]} -gt 0 ]] || { [[ $command == up ]] && services=("${ALL[@]}") || services=("${KNOWN[@]}"); }
for s in "${services[@]}"; do
    [[ " ${KNOWN[*]} " == *" $s "* ]] || die "unknown service '$s' (known: ${KNOWN[*]})"
done
mkdir -p "$STATE"
case $command in
    up) up "${services[@]}" ;;
    down) # stop in reverse order: the worker before its server
        reversed=()
        for ((i = ${#services[@]} - 1; i >= 0; i--)); do reversed+=("${services[i]}"); done
        down "${reversed[@]}" ;;
    status) status "${services[@]}" ;;
    env) environment ;;
    tools) command -v kcat >/dev/null || apt_install kcat ;;  # clients the tests use
    browser) { command -v chromium && command -v chromedriver; } >/dev/null || apt_install chromium chromium-driver ;;  # the UI tests' headless Chromium
    *) die "usage: $0 up|down|status|env|tools|browser [${KNOWN[*]}]" ;;
esac
