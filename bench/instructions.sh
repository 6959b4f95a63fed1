#!/usr/bin/env bash
# Instructions per token, counted by valgrind's callgrind: a figure that, unlike tokens/s on
# shared cores, does not move with the machine's load, so a change's cost or saving shows even
# when it is a few percent. For each algorithm the release daemon runs under callgrind; after
# a warm-up the counters are zeroed, wrk sends token requests (post authentication) for a few
# seconds, and the counters are dumped. Printed: instructions per token, the part spent in
# signing (`SigningKey::raw_sign`, the crypto backend) and the rest; beside them, the bare
# hyper server's instructions per request under the same requests.
#
#   bench/instructions.sh [ALG…]   (default: EdDSA ES256 RS512; needs wrk and valgrind)
#
# Under valgrind the CPU's AVX-512 paths are not offered, so the crypto backend takes its AVX2
# ones: compare counts with counts, not with native timings.
set -euo pipefail
cd "$(dirname "$0")/.."
algs=("$@")
[ ${#algs[@]} -gt 0 ] || algs=(EdDSA ES256 RS512)
for tool in wrk valgrind callgrind_control callgrind_annotate; do
    command -v "$tool" >/dev/null || { echo "bench/instructions.sh needs $tool (apt-get install wrk valgrind)" >&2; exit 1; }
done

cargo build --release --workspace --bins --examples -q
bin=$PWD/target/release
work=$(mktemp -d)
vpid=
cleanup() { [ -n "$vpid" ] && kill "$vpid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

. bench/common.sh

# Runs "$@" under callgrind, serving on $url; prints "requests total_Ir signing_Ir".
count() { # url health_url out command…
    local url=$1 health=$2 out=$3 report requests dump
    shift 3
    valgrind --tool=callgrind --callgrind-out-file="$out.%p" "$@" 2>"$out.log" >/dev/null & vpid=$!
    wait_up "$health" 600 # valgrind starts slowly
    wrk -t1 -c8 -d2s -s "$work/post.lua" "$url" >/dev/null
    callgrind_control -z "$vpid" >/dev/null 2>&1
    report=$(wrk -t1 -c8 -d5s -s "$work/post.lua" "$url")
    callgrind_control -d "$vpid" >/dev/null 2>&1
    kill "$vpid"; wait "$vpid" 2>/dev/null || true; vpid=
    requests=$(awk '/requests in/ { print $1 }' <<<"$report")
    dump=$(ls "$out".*.1)
    callgrind_annotate --auto=no --inclusive=yes "$dump" 2>/dev/null | awk -v n="$requests" '
        /PROGRAM TOTALS/ { gsub(",", "", $1); total = $1 }
        /SigningKey::raw_sign/ && !sign { gsub(",", "", $1); sign = $1 }
        # %.0f, not %d: mawk clamps %d to 2^31 - 1, which an RSA run passes.
        END { printf "%d %.0f %.0f\n", n, total, sign }'
}

echo "instructions per token (callgrind), post authentication, wrk -t1 -c8 for 5 s after a 2 s warm-up"
read -r n total _ < <(count http://127.0.0.1:19390/oauth/token http://127.0.0.1:19390/ "$work/bare" \
    "$bin/examples/bare_hyper" 127.0.0.1:19390)
bare=$((total / n))
printf '%-6s %10s %10s %10s %s\n' alg per_token signing rest "(bare hyper: $bare per request)"
port=19390
for alg in "${algs[@]}"; do
    port=$((port + 1))
    dir="$work/$alg"; daemon_config "$alg" "$port"
    read -r n total sign < <(TOKENDEALER_LOG=warn count "http://127.0.0.1:$port/oauth/token" \
        "http://127.0.0.1:$port/healthz" "$dir/callgrind" "$bin/tokendealerd" --config "$dir/config.toml")
    printf '%-6s %10d %10d %10d\n' "$alg" $((total / n)) $((sign / n)) $(((total - sign) / n))
done
