#!/usr/bin/env bash
# Measures the Kafka-protocol broker candidates alone (switchboard-bench
# broker): records/s, broker CPU per record and produce→consume latency by
# log length, at each RATE for SECONDS, one candidate at a time. Writes
# docs/load/broker-<candidate>-<rate>.json (from the tool itself).
#   scripts/bench-brokers.sh [SECONDS] [RATE…]        defaults: 600 1000 5000
# Candidates (built into $SB_CACHE when missing, except tansu-sqlite: see
# docs/benchmarks.md for its cargo install line):
#   nisshi-sqlite  the development broker image (nisshi 0.8.1, SQLite)
#   tansu-sqlite   tansu 0.6.0 --features libsql, SQLite
#   nisshi-memory  nisshi 0.8.1, memory storage
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$SB_ROOT"
seconds="${1:-600}"
[ "$#" -gt 0 ] && shift
if [ "$#" -gt 0 ]; then rates=("$@"); else rates=(1000 5000); fi
ensure_nisshi
bench="${CARGO_TARGET_DIR:-$SB_ROOT/target}/release/switchboard-bench"
[ -x "$bench" ] || die "build it first: cargo build --release --bins"
TANSU_SQLITE="$SB_CACHE/tansu-0.6.0-libsql/bin/tansu"
listen='--listener-url tcp://{addr} --advertised-listener-url tcp://{addr}'
only="${SB_CANDIDATES:-nisshi-sqlite tansu-sqlite nisshi-memory}"
for rate in "${rates[@]}"; do
  for c in $only; do
    out="docs/load/broker-$c-$rate.json"
    case "$c" in
      nisshi-sqlite) args=(--label "nisshi 0.8.1 SQLite") ;;
      tansu-sqlite)
        [ -x "$TANSU_SQLITE" ] || { log "skipping $c: $TANSU_SQLITE missing"; continue; }
        args=(--label "tansu 0.6.0 SQLite" --broker-cmd "$TANSU_SQLITE broker $listen --storage-engine sqlite://tansu.db") ;;
      nisshi-memory)
        args=(--label "nisshi 0.8.1 memory" --broker-cmd "$NISSHI_BIN broker $listen --storage-engine memory://nisshi/") ;;
      *) die "unknown candidate $c" ;;
    esac
    log "$c at $rate records/s for $seconds s -> $out"
    "$bench" broker --rate "$rate" --seconds "$seconds" --window-secs 60 "${args[@]}" --json "$out"
  done
done
