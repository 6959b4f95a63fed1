#!/usr/bin/env bash
# Runs every fuzz target for SECONDS_PER_TARGET (default 60) and prints how many inputs each
# one tried. Exits non-zero if any target crashed; the crashing input is kept under
# fuzz/artifacts/TARGET/ and can be replayed with `cargo +nightly fuzz run TARGET FILE`.
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`).
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:-60}"
case "$seconds" in
'' | *[!0-9]*)
    echo "usage: fuzz/run.sh [SECONDS_PER_TARGET]" >&2
    exit 2
    ;;
esac

targets=(form_body basic_header clients_file admin_frame)

# Beside the workspace's build output, so that whatever keeps or cleans one keeps or cleans both.
target_dir="${CARGO_TARGET_DIR:-$(cd .. && pwd)/target}/fuzz"

# libFuzzer adds every input that finds new coverage to the first corpus directory. That is a
# scratch copy, so the committed seeds under corpus/ stay the few hand-picked ones.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cargo +nightly fuzz build --target-dir "$target_dir"

failed=()
summary=()
for target in "${targets[@]}"; do
    echo "=== fuzz $target for ${seconds}s"
    mkdir -p "$work/corpus/$target" "corpus/$target"
    log="$work/$target.log"
    status=0
    cargo +nightly fuzz run --target-dir "$target_dir" "$target" "$work/corpus/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 2>&1 | tee "$log" |
        grep -E 'ERROR|SUMMARY|panicked|Done [0-9]+ runs' || true
    status="${PIPESTATUS[0]}"
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
    if [ "$status" -ne 0 ]; then
        failed+=("$target")
        summary+=("$(printf '%-14s FAILED (exit %s); see fuzz/artifacts/%s/' "$target" "$status" "$target")")
        # The full report (stack trace, input) is in the log; show its end.
        tail -n 60 "$log" >&2
    else
        summary+=("$(printf '%-14s %12s executions' "$target" "${runs:-?}")")
    fi
done

echo
echo "=== fuzz summary (${seconds}s per target)"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "crashed: ${failed[*]}" >&2
    exit 1
fi
