#!/usr/bin/env bash
# The clients file at scale (default 100 000 clients, about 18 MB): how long parsing it takes,
# how long a reload takes after a one-line edit and after every client changed (the daemon's
# own `duration_ms` and the `tokendealer reload` round trip), the daemon's RSS idle, at its
# peak across repeated reloads and after them, and EdDSA token throughput and p99 latency
# without reloads and with a line appended to the file every 200 ms, in alternating rounds.
#
#   bench/clients_scale.sh [CLIENTS] [SECONDS] [ROUNDS]      (defaults 100000, 10, 5; needs wrk)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-100000}
secs=${2:-10}
rounds=${3:-5}
command -v wrk >/dev/null || { echo "bench/clients_scale.sh needs wrk (apt-get install wrk)" >&2; exit 1; }
cargo build --release --workspace --bins -q
cargo build --release -p tokendealer-shared --example parse_clients -q
bin=$PWD/target/release
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

secret=bench-secret-0123456789abcdef0123456789abcdef
# Two versions of the file with the same clients: every one's scopes differ between them.
python3 - "$work" "$n" "$secret" <<'PY'
import hashlib, sys
work, n, secret = sys.argv[1], int(sys.argv[2]), sys.argv[3]
h = hashlib.sha256(secret.encode()).hexdigest()
for name, scopes in (("clients.toml", '"read", "write"'), ("changed.toml", '"read"')):
    with open(f"{work}/{name}", "w") as f:
        for i in range(n):
            f.write(f'[clients.svc-{i:06d}]\nsecret_hashes = ["sha256:{h}"]\n'
                    f'audiences = ["https://api-{i % 100}.example"]\nscopes = [{scopes}]\n\n')
PY
chmod 600 "$work/clients.toml" "$work/changed.toml"
echo "clients file: $n clients, $(du -h "$work/clients.toml" | cut -f1)"
echo "parse and validate (parse_clients example, $(nproc) cores): $("$bin/examples/parse_clients" "$work/clients.toml" 5 | tail -1)"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$work/config.toml" <<TOML
listen = "127.0.0.1:$port"
admin_socket = "$work/admin.sock"
clients_file = "$work/clients.toml"
key_dir = "$work/keys"
algorithm = "EdDSA"
TOML
url=http://127.0.0.1:$port
start=$(date +%s%N)
# Warnings only, so no per-token line costs throughput; the reload line is kept for its duration.
TOKENDEALER_LOG=warn,tokendealer_daemon::clients=info "$bin/tokendealerd" --config "$work/config.toml" 2>"$work/log" & pid=$!
until curl -sf "$url/readyz" >/dev/null 2>&1; do sleep 0.05; done
echo "start-up to ready: $(( ($(date +%s%N) - start) / 1000000 )) ms"
rss() { awk "/$1/ {printf \"%.1f MB\", \$2/1024}" "/proc/$pid/status"; }
echo "idle RSS after start-up: $(rss VmRSS)"
# From here on VmHWM is the peak since this reset, not since start-up.
echo 5 > "/proc/$pid/clear_refs"

save() { printf '# saved %s\n' "$1" >> "$work/clients.toml"; }
durations() { grep -o 'duration_ms=[0-9]*' "$work/log" | cut -d= -f2 | tail -n "$1" | tr '\n' ' '; }
reload() {
    local t0; t0=$(date +%s%N)
    "$bin/tokendealer" --socket "$work/admin.sock" reload >/dev/null
    trips+=("$(( ($(date +%s%N) - t0) / 1000000 ))")
}
trips=()
for i in 1 2 3 4 5; do save "r$i"; reload; done
echo "reload after a one-line edit, ms: daemon's duration_ms $(durations 5)| tokendealer reload round trip ${trips[*]}"
trips=()
# Renamed into place, as editors save: the old version is kept to swap back next time.
for i in 1 2 3 4; do
    mv "$work/clients.toml" "$work/previous.toml"
    mv "$work/changed.toml" "$work/clients.toml"
    mv "$work/previous.toml" "$work/changed.toml"
    reload
done
echo "reload after every client changed, ms: daemon's duration_ms $(durations 4)| tokendealer reload round trip ${trips[*]}"

cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = "grant_type=client_credentials&client_id=svc-000042&client_secret=$secret"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
LUA
load() {
    wrk -t2 -c32 -d"${secs}s" --latency -s "$work/post.lua" "$url/oauth/token" \
        | awk '/Requests\/sec/ {rps = int($2)} $1 == "99%" {p99 = $2} END {print rps " tokens/s, p99 " p99}'
}
reloads() { curl -s "$url/metrics" | awk '/^tokendealer_clients_reloads_total / {print $2}'; }
# Throughput varies from run to run by more than reloads change it, on a shared machine
# especially: runs without and with saves alternate, and each round's change is reported.
echo "EdDSA, wrk -t2 -c32, ${secs}s each, $rounds rounds of: no reloads, then the file saved every 200 ms:"
quiet=() busy=()
for round in $(seq "$rounds"); do
    quiet+=("$(load)")
    before=$(reloads)
    ( end=$((SECONDS + secs)); i=0; while [ "$SECONDS" -lt "$end" ]; do sleep 0.2; save "load$round.$((i += 1))"; done ) &
    saver=$!
    busy+=("$(load)")
    wait "$saver"
    sleep 0.5
    echo "  round $round: no reloads ${quiet[-1]} | saved every 200 ms ${busy[-1]} ($(( $(reloads) - before )) reloads)"
done
# Each round's change, then their median: a round compares runs seconds apart.
changes=$(for i in "${!quiet[@]}"; do
    awk -v q="${quiet[$i]%% *}" -v b="${busy[$i]%% *}" 'BEGIN {printf "%+.1f\n", (b - q) * 100 / q}'
done)
median=$(sort -g <<<"$changes" | awk '{v[NR] = $1} END {printf "%+.1f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}')
echo "  saved every 200 ms vs no reloads, per round: $(tr '\n' ' ' <<<"$changes")% (median $median %)"
echo "peak RSS across $(( $(reloads) )) reloads: $(rss VmHWM)"
sleep 3
echo "RSS 3 s after the last reload: $(rss VmRSS)"
