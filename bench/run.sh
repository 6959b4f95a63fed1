#!/usr/bin/env bash
# Token issuance benchmark: the release daemon on loopback under wrk, for RS512 (default),
# RS256, ES256 and EdDSA, at concurrency 32 and 256, with Basic and with post client
# authentication; beside it, the limits it is measured against: the crypto backend's own
# signing rate (one thread and all cores), `openssl speed -multi N rsa2048`, and a bare hyper
# server answering a small JSON body under the same load tool.
#
#   bench/run.sh [SECONDS_PER_RUN [RUNS]]   (defaults 10 and 3; needs wrk: apt-get install wrk)
#
# Prints one table; every throughput is also given as a fraction of its limits, measured
# just before and just after that algorithm's rows. Last, the EdDSA tail latency with the load
# tool unable to preempt the server, beside bare hyper's under the same.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
runs=${2:-3}
threads=$(nproc)
command -v wrk >/dev/null || { echo "bench/run.sh needs wrk (apt-get install wrk)" >&2; exit 1; }

cargo build --release --workspace --bins --examples -q
bin=target/release
work=$(mktemp -d)
pids=()
idle_rss=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

. bench/common.sh

# wrk's report → "rps p50_ms p99_ms non2xx errors requests"
parse() {
    awk '
        /Requests\/sec/ { rps = $2 }
        /requests in/ { requests = $1 }
        /^ +50%/ { p50 = $2 } /^ +99%/ { p99 = $2 }
        /Non-2xx/ { non2xx = $NF }
        /Socket errors/ { gsub(",", ""); errors = $4 + $6 + $8 + $10 }
        END {
            printf "%d %s %s %d %d %d\n", rps, ms(p50), ms(p99), non2xx + 0, errors + 0, requests
        }
        function ms(v) {
            if (v ~ /us$/) { sub("us", "", v); return sprintf("%.2f", v / 1000) }
            if (v ~ /ms$/) { sub("ms", "", v); return sprintf("%.2f", v) }
            if (v ~ /s$/) { sub("s", "", v); return sprintf("%.2f", v * 1000) }
            return v
        }'
}

wrk=(wrk) # the load tool's command; the last section runs it under another scheduling policy
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; } # user + system, in clock ticks
tick=$(getconf CLK_TCK)

# Each case: a 2 s warm-up (discarded: the first seconds after a start are slower), then $runs
# runs; the run with the median throughput is reported, with the non-2xx and socket errors of
# all runs added up. On two cores shared with the load tool, consecutive runs of one binary
# differ by up to a quarter, so one short run says little. Beside each run, the CPU time per
# request of the server (its /proc ticks) and of wrk (bash's `times` for its child): on shared
# cores, throughput is 2 cores divided by their sum.
load() { # url script concurrency server_pid → "rps p50 p99 non2xx errors server_us wrk_us"
    "${wrk[@]}" -t "$threads" -c "$3" -d 2s ${2:+-s "$2"} "$1" >/dev/null
    local results=() i before report
    for ((i = 0; i < runs; i++)); do
        before=$(cpu_ticks "$4")
        report=$("${wrk[@]}" -t "$threads" -c "$3" -d "${secs}s" --latency ${2:+-s "$2"} "$1"; times)
        results+=("$(parse <<<"$report") $(($(cpu_ticks "$4") - before)) $(tail -1 <<<"$report")")
    done
    printf '%s\n' "${results[@]}" | sort -n | awk -v n="$runs" -v tick="$tick" '
        { line[NR] = $0; non2xx += $4; errors += $5 }
        END {
            split(line[int((n + 1) / 2)], m, " ")
            wrk_s = secs(m[8]) + secs(m[9])
            printf "%s %s %s %d %d %.1f %.1f\n", m[1], m[2], m[3], non2xx, errors,
                m[7] / tick / m[6] * 1e6, wrk_s / m[6] * 1e6
        }
        function secs(v,   parts) { split(v, parts, /[ms]/); return parts[1] * 60 + parts[2] }'
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "load tool: wrk -t $threads, on the same cores; per case a 2 s warm-up, then the median of $runs runs of ${secs}s"

echo; echo "== limits"
ossl_rate() { openssl speed -multi "$threads" -seconds 3 rsa2048 2>/dev/null | awk '/^rsa 2048 bits/ { print int($6) }' | tail -1; }
"$bin/examples/sign_rate" 3
ossl=$(ossl_rate)
echo "openssl speed -multi $threads rsa2048: ${ossl:-?} sign/s"
"$bin/examples/bare_hyper" 127.0.0.1:19090 >/dev/null & pids+=($!)
wait_up http://127.0.0.1:19090/
# The limit is the bare server under the very requests the daemon gets (a POST with the same
# headers and body), so that wrk's own cost per request is the same on both sides; a GET is
# shown for reference.
read -r get_rps _ _ _ _ _ _ < <(load http://127.0.0.1:19090/ "" 32 "${pids[-1]}")
read -r bare_rps bare_p50 bare_p99 _ _ bare_us bare_wrk_us < <(load http://127.0.0.1:19090/oauth/token "$work/basic.lua" 32 "${pids[-1]}")
echo "bare hyper, c=32, the token request (POST, Basic): $bare_rps req/s (p50 $bare_p50 ms, p99 $bare_p99 ms; CPU per request: server $bare_us us, wrk $bare_wrk_us us); a plain GET: $get_rps req/s"
bare_pid=${pids[-1]}

# The machine's speed drifts by up to a third over minutes (other tenants of the host), so
# each algorithm's limits are measured again just before and just after its rows, and its
# fractions divide by the mean of the two: the crypto backend's all-cores signing rate,
# `openssl speed` for RSA or the bare hyper server for the others, and the bare hyper server
# signing with the algorithm before each answer (at $sbare_url), the most a token server on
# this stack could give with nothing of its own but the signature.
limits() { # alg → "signing other signing_server signing_server_p99"
    local sign other signing_server p99
    sign=$("$bin/examples/sign_rate" 3 "$1" | awk -v a="$1" '$1 == a { print $3 }')
    case $1 in
        RS*) other=$(ossl_rate) ;;
        *) read -r other _ < <(load http://127.0.0.1:19090/oauth/token "$work/basic.lua" 32 "$bare_pid") ;;
    esac
    read -r signing_server _ p99 _ < <(load "$sbare_url" "$work/basic.lua" 32 "$sbare_pid")
    echo "$sign ${other:-0} ${signing_server:-0} ${p99:-?}"
}

echo; echo "== tokendealerd"
printf '%-6s %-5s %-4s %9s %8s %8s %7s %7s %9s %13s %s\n' alg auth c tokens/s p50_ms p99_ms non2xx errors rss_mb "cpu_us srv/wrk" "of limit"
port=19100
for alg in RS512 RS256 ES256 EdDSA; do
    port=$((port + 1))
    dir="$work/$alg"; daemon_config "$alg" "$port"
    case $alg in RS*) other_name="openssl" ;; *) other_name="bare hyper" ;; esac
    sbare_url="http://127.0.0.1:$((port + 100))/oauth/token"
    "$bin/examples/bare_hyper" "127.0.0.1:$((port + 100))" "$alg" >/dev/null & sbare_pid=$!; pids+=("$sbare_pid")
    wait_up "$sbare_url"
    read -r sign_before other_before sbare_before sbare_p99_before < <(limits "$alg")
    TOKENDEALER_LOG=warn "$bin/tokendealerd" --config "$dir/config.toml" 2>"$dir/log" & pid=$!; pids+=("$pid")
    wait_up "http://127.0.0.1:$port/healthz"
    idle_rss+=("$alg $(awk '/VmRSS/ { printf "%.1f", $2/1024 }' "/proc/$pid/status")")
    rows=()
    for c in 32 256; do
        for auth in basic post; do
            read -r rps p50 p99 non2xx errors srv_us wrk_us < <(load "http://127.0.0.1:$port/oauth/token" "$work/$auth.lua" "$c" "$pid")
            rss=$(awk '/VmHWM/ { printf "%.1f", $2/1024 }' "/proc/$pid/status")
            rows+=("$auth $c $rps $p50 $p99 $non2xx $errors $rss $srv_us/$wrk_us")
        done
    done
    kill "$pid"; wait "$pid" 2>/dev/null || true
    read -r sign_after other_after sbare_after sbare_p99_after < <(limits "$alg")
    kill "$sbare_pid"; wait "$sbare_pid" 2>/dev/null || true
    sign=$(((sign_before + sign_after) / 2)); other=$(((other_before + other_after) / 2))
    sbare=$(((sbare_before + sbare_after) / 2))
    for row in "${rows[@]}"; do
        read -r auth c rps p50 p99 non2xx errors rss cpu <<<"$row"
        frac=$(awk -v r="$rps" -v s="$sign" -v o="$other" -v n="$other_name" -v b="$sbare" \
            'BEGIN { printf "%.2f of signing, %.2f of %s, %.2f of bare hyper + signing", r / s, (o > 0 ? r / o : 0), n, r / b }')
        printf '%-6s %-5s %-4s %9s %8s %8s %7s %7s %9s %13s %s\n' "$alg" "$auth" "$c" "$rps" "$p50" "$p99" "$non2xx" "$errors" "$rss" "$cpu" "$frac"
    done
    echo "       limits for $alg (before → after its rows): signing $sign_before → $sign_after/s, $other_name $other_before → $other_after/s, bare hyper + signing $sbare_before → $sbare_after/s (c=32, p99 $sbare_p99_before → $sbare_p99_after ms)"
done
echo "idle RSS after start-up, MB: $(IFS=,; echo "${idle_rss[*]}" | sed 's/,/, /g')"

# The rows above run with TOKENDEALER_LOG=warn; by default (info) every token is also a log
# line, here written to a file as journald or a log collector would take it.
dir="$work/EdDSA"
"$bin/tokendealerd" --config "$dir/config.toml" 2>"$dir/info.log" & pid=$!; pids+=("$pid")
wait_up "http://127.0.0.1:$port/healthz"
read -r rps p50 p99 non2xx errors srv_us wrk_us < <(load "http://127.0.0.1:$port/oauth/token" "$work/post.lua" 32 "$pid")
rss=$(awk '/VmHWM/ { printf "%.1f", $2/1024 }' "/proc/$pid/status")
printf '%-6s %-5s %-4s %9s %8s %8s %7s %7s %9s %13s %s\n' "EdDSA" "post" "32" "$rps" "$p50" "$p99" "$non2xx" "$errors" "$rss" "$srv_us/$wrk_us" \
    "$(awk -v r="$rps" -v s="$other" -v b="$sbare" 'BEGIN { printf "%.2f of bare hyper, %.2f of bare hyper + signing", r / s, r / b }'), log level info ($(grep -c 'issued access token' "$dir/info.log") lines)"
kill "$pid"; wait "$pid" 2>/dev/null || true

# On two cores shared with the load tool, each response wakes a wrk thread that preempts the
# server's worker then running (per-thread /proc counters: about 0.7 involuntary switches per
# token), and requests queued behind that worker wait out wrk's time slice: the tail latency
# then measures the scheduler as much as the server. The same case with wrk as SCHED_BATCH,
# whose wakeups do not preempt, shows the server's own; beside it, bare hyper and bare hyper
# signing with EdDSA under the same.
echo; echo "== p99 with the load tool not preempting the server (wrk under chrt --batch 0)"
wrk=(chrt --batch 0 wrk)
TOKENDEALER_LOG=warn "$bin/tokendealerd" --config "$dir/config.toml" 2>"$dir/log" & pid=$!; pids+=("$pid")
wait_up "http://127.0.0.1:$port/healthz"
read -r rps p50 p99 non2xx errors _ < <(load "http://127.0.0.1:$port/oauth/token" "$work/basic.lua" 32 "$pid")
kill "$pid"; wait "$pid" 2>/dev/null || true
read -r bare_rps bare_p50 bare_p99 _ < <(load http://127.0.0.1:19090/oauth/token "$work/basic.lua" 32 "$bare_pid")
"$bin/examples/bare_hyper" "127.0.0.1:$((port + 100))" EdDSA >/dev/null & sbare_pid=$!; pids+=("$sbare_pid")
wait_up "$sbare_url"
read -r sbare_rps sbare_p50 sbare_p99 _ < <(load "$sbare_url" "$work/basic.lua" 32 "$sbare_pid")
echo "EdDSA basic c=32: $rps tokens/s, p50 $p50 ms, p99 $p99 ms, $non2xx non-2xx, $errors errors; $(awk -v r="$rps" -v b="$bare_rps" -v s="$sbare_rps" 'BEGIN { printf "%.2f of bare hyper, %.2f of bare hyper + signing", r / b, r / s }')"
echo "bare hyper, same requests: $bare_rps req/s, p50 $bare_p50 ms, p99 $bare_p99 ms"
echo "bare hyper + EdDSA signing, same requests: $sbare_rps req/s, p50 $sbare_p50 ms, p99 $sbare_p99 ms"
