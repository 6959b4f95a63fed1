#!/usr/bin/env bash
# The clients file at scale: 100 000 clients. Reports the daemon's RSS with them loaded,
# how long a reload of the whole file takes (the synchronous `tokendealer reload`), and
# token throughput with and without a reload every second.
#
#   bench/clients_scale.sh [CLIENTS] [SECONDS]      (defaults 100000, 10; needs wrk)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-100000}
secs=${2:-10}
cargo build --release --workspace --bins -q
bin=$PWD/target/release
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

secret=bench-secret-0123456789abcdef0123456789abcdef
python3 - "$work/clients.toml" "$n" "$secret" <<'PY'
import hashlib, sys
path, n, secret = sys.argv[1], int(sys.argv[2]), sys.argv[3]
h = hashlib.sha256(secret.encode()).hexdigest()
with open(path, "w") as f:
    for i in range(n):
        f.write(f'[clients.svc-{i:06d}]\nsecret_hashes = ["sha256:{h}"]\n'
                f'audiences = ["https://api-{i % 100}.example"]\nscopes = ["read", "write"]\n\n')
PY
chmod 600 "$work/clients.toml"
echo "clients file: $n clients, $(du -h "$work/clients.toml" | cut -f1)"
cat > "$work/config.toml" <<TOML
listen = "127.0.0.1:19300"
admin_socket = "$work/admin.sock"
clients_file = "$work/clients.toml"
key_dir = "$work/keys"
algorithm = "EdDSA"
TOML
start=$(date +%s%N)
TOKENDEALER_LOG=warn "$bin/tokendealerd" --config "$work/config.toml" 2>"$work/log" & pid=$!
until curl -sf http://127.0.0.1:19300/readyz >/dev/null 2>&1; do sleep 0.05; done
echo "start-up to ready: $(( ($(date +%s%N) - start) / 1000000 )) ms"
echo "idle RSS: $(awk '/VmRSS/ {printf "%.1f MB", $2/1024}' /proc/$pid/status)"

cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = "grant_type=client_credentials&client_id=svc-000042&client_secret=$secret"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
LUA
touch_file() { printf '# edit %s\n' "$1" >> "$work/clients.toml"; }
reload_ms() {
    touch_file "$1"
    local t0; t0=$(date +%s%N)
    "$bin/tokendealer" --socket "$work/admin.sock" reload >/dev/null
    echo $(( ($(date +%s%N) - t0) / 1000000 ))
}
times=()
for i in 1 2 3 4 5; do times+=("$(reload_ms "r$i")"); done
echo "reload of the whole file (tokendealer reload round trip), ms: ${times[*]}"

quiet=$(wrk -t2 -c32 -d"${secs}s" -s "$work/post.lua" http://127.0.0.1:19300/oauth/token | awk '/Requests\/sec/ {print int($2)}')
( for i in $(seq "$secs"); do sleep 1; touch_file "load$i"; done ) &
busy=$(wrk -t2 -c32 -d"${secs}s" -s "$work/post.lua" http://127.0.0.1:19300/oauth/token | awk '/Requests\/sec/ {print int($2)}')
wait
echo "EdDSA tokens/s, c=32: $quiet without reloads, $busy with a reload every second"
echo "peak RSS: $(awk '/VmHWM/ {printf "%.1f MB", $2/1024}' /proc/$pid/status)"
