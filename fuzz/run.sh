#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer's coverage instrumentation on stable
# Rust (the flags cargo-fuzz passes, without a sanitizer) and runs each for a
# bounded time, seeded from fuzz/seeds/<target>/, and prints how many inputs
# each ran.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Seeds: windows of real WAL written by Postgres 17 with 1 MiB segments and
# each wal_compression method (wal_decoder); for the others, what the
# project's own encoders and writers produce, kept true to them by each
# crate's `fuzz_seeds` test (QUIRE_WRITE_FUZZ_SEEDS=1 rewrites them).
#
# A crash or a hang (a run over -timeout seconds) fails the script and
# leaves the input in fuzz/artifacts/<target>/.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
seconds=${1:-30}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(wal_decoder safekeeper_wire pg_wire safekeeper_control_file layer_file
        timeline_metadata redo_record page_protocol conninfo timestamp remote_index)
fi

export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
export CARGO_TARGET_DIR=$here/target
# An explicit --target keeps the instrumentation off build scripts.
host=$(rustc -vV | sed -n 's/^host: //p')
cargo build --manifest-path "$here/Cargo.toml" --locked --release --bins --quiet --target "$host"

for target in "${targets[@]}"; do
    corpus=$here/corpus/$target
    artifacts=$here/artifacts/$target
    mkdir -p "$corpus" "$artifacts"
    cp "$here/seeds/$target"/* "$corpus/"
    echo "fuzz/run.sh: $target for $seconds s"
    "$CARGO_TARGET_DIR/$host/release/$target" "$corpus" -artifact_prefix="$artifacts/" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -max_len=262144 -print_final_stats=1 \
        2>&1 | grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb|Done|==|SUMMARY)|panicked|ERROR" \
        | sed "s/^/$target: /" || true
    if ls "$artifacts" | grep -qE '^(crash|timeout|oom)-'; then
        echo "fuzz/run.sh: $target failed; inputs in $artifacts" >&2
        exit 1
    fi
done
