#!/usr/bin/env bash
# Token issuance benchmark: the release daemon on loopback under wrk, for RS512 (default),
# RS256, ES256 and EdDSA, at concurrency 32 and 256, with Basic and with post client
# authentication; beside it, the limits it is measured against: the crypto backend's own
# signing rate (one thread and all cores), `openssl speed -multi N rsa2048`, and a bare hyper
# server answering a small JSON body under the same load tool.
#
#   bench/run.sh [SECONDS_PER_RUN]      (default 10; needs wrk: apt-get install wrk)
#
# Prints one table; every throughput is also given as a fraction of its limit.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
threads=$(nproc)
command -v wrk >/dev/null || { echo "bench/run.sh needs wrk (apt-get install wrk)" >&2; exit 1; }

cargo build --release --workspace --bins --examples -q
bin=target/release
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

secret=bench-secret-0123456789abcdef0123456789abcdef
hash=$(printf %s "$secret" | sha256sum | cut -d' ' -f1)
cat > "$work/clients.toml" <<TOML
[clients.bench]
secret_hashes = ["sha256:$hash"]
audiences     = ["https://api.bench.example"]
scopes        = ["read", "write"]
token_ttl     = "1h"
TOML
chmod 600 "$work/clients.toml"
basic=$(printf %s "bench:$secret" | base64 -w0)
cat > "$work/basic.lua" <<LUA
wrk.method = "POST"
wrk.body = "grant_type=client_credentials"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Basic $basic"
LUA
cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = "grant_type=client_credentials&client_id=bench&client_secret=$secret"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
LUA

# wrk's report → "rps p50_ms p99_ms non2xx errors"
parse() {
    awk '
        /Requests\/sec/ { rps = $2 }
        /^ +50%/ { p50 = $2 } /^ +99%/ { p99 = $2 }
        /Non-2xx/ { non2xx = $NF }
        /Socket errors/ { gsub(",", ""); errors = $4 + $6 + $8 + $10 }
        END {
            printf "%d %s %s %d %d\n", rps, ms(p50), ms(p99), non2xx + 0, errors + 0
        }
        function ms(v) {
            if (v ~ /us$/) { sub("us", "", v); return sprintf("%.2f", v / 1000) }
            if (v ~ /ms$/) { sub("ms", "", v); return sprintf("%.2f", v) }
            if (v ~ /s$/) { sub("s", "", v); return sprintf("%.2f", v * 1000) }
            return v
        }'
}

load() { # url script concurrency
    wrk -t "$threads" -c "$3" -d "${secs}s" --latency ${2:+-s "$2"} "$1" | parse
}

wait_up() { # url
    for _ in $(seq 200); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 0.05; done
    echo "server at $1 did not come up" >&2; exit 1
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "load tool: wrk -t $threads -d ${secs}s, on the same cores"

echo; echo "== limits"
"$bin/examples/sign_rate" 3 | tee "$work/sign.tsv"
ossl=$(openssl speed -multi "$threads" -seconds 3 rsa2048 2>/dev/null | awk '/^rsa 2048 bits/ { print int($6) }' | tail -1)
echo "openssl speed -multi $threads rsa2048: ${ossl:-?} sign/s"
"$bin/examples/bare_hyper" 127.0.0.1:19090 >/dev/null & pids+=($!)
wait_up http://127.0.0.1:19090/
# The limit is the bare server under the very requests the daemon gets (a POST with the same
# headers and body), so that wrk's own cost per request is the same on both sides; a GET is
# shown for reference.
read -r get_rps _ get_p99 _ _ < <(load http://127.0.0.1:19090/ "" 32)
read -r bare_rps bare_p50 bare_p99 _ _ < <(load http://127.0.0.1:19090/oauth/token "$work/basic.lua" 32)
echo "bare hyper, c=32, the token request (POST, Basic): $bare_rps req/s (p50 $bare_p50 ms, p99 $bare_p99 ms); a plain GET: $get_rps req/s"
kill "${pids[-1]}"

limit_all() { awk -v a="$1" '$1 == a { print $3 }' "$work/sign.tsv"; }

echo; echo "== tokendealerd"
printf '%-6s %-5s %-4s %9s %8s %8s %7s %7s %9s %s\n' alg auth c tokens/s p50_ms p99_ms non2xx errors rss_mb "of limit"
port=19100
for alg in RS512 RS256 ES256 EdDSA; do
    port=$((port + 1))
    dir="$work/$alg"; mkdir -p "$dir"
    cat > "$dir/config.toml" <<TOML
listen       = "127.0.0.1:$port"
admin_socket = "$dir/admin.sock"
clients_file = "$work/clients.toml"
key_dir      = "$dir/keys"
algorithm    = "$alg"
TOML
    TOKENDEALER_LOG=warn "$bin/tokendealerd" --config "$dir/config.toml" 2>"$dir/log" & pid=$!; pids+=("$pid")
    wait_up "http://127.0.0.1:$port/healthz"
    for c in 32 256; do
        for auth in basic post; do
            read -r rps p50 p99 non2xx errors < <(load "http://127.0.0.1:$port/oauth/token" "$work/$auth.lua" "$c")
            rss=$(awk '/VmHWM/ { printf "%.1f", $2/1024 }' "/proc/$pid/status")
            sign=$(limit_all "$alg")
            frac="$(awk -v r="$rps" -v s="$sign" 'BEGIN { printf "%.2f of signing", r / s }')"
            case $alg in
                RS*) frac="$frac, $(awk -v r="$rps" -v s="${ossl:-0}" 'BEGIN { if (s > 0) printf "%.2f of openssl", r / s }')" ;;
                *) frac="$frac, $(awk -v r="$rps" -v s="$bare_rps" 'BEGIN { printf "%.2f of bare hyper", r / s }')" ;;
            esac
            printf '%-6s %-5s %-4s %9s %8s %8s %7s %7s %9s %s\n' "$alg" "$auth" "$c" "$rps" "$p50" "$p99" "$non2xx" "$errors" "$rss" "$frac"
        done
    done
    kill "$pid"; wait "$pid" 2>/dev/null || true
done
