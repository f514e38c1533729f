#!/usr/bin/env bash
# ideamill next to River 0.5 (tuned: 1 ms fetch cooldown), in one run, on the
# same machine, SQLite and PostgreSQL: no-op throughput at the same
# concurrency for both of ideamill's shapes (1 stage: one job per item, River's
# shape; 3 stages: each finish also stores an output and enqueues the next
# job), and pickup latency. Prints "FIG name value" lines, then the ratios
# against River that issue 16 sets targets for.
#
# Usage (from the project root, after `cargo build --release -p ideamill`):
#   scripts/sidebyside.sh [IDEAMILL_BIN] [PG_URL]
# The River harness is ../shared/bench/qbench (see its README), built once
# into $QBENCH_TARGET (default ~/.cache/qbench-target); QBENCH_DIR may name
# its source elsewhere. CONCURRENCY (default 64) is River's worker count and
# ideamill's per stage.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
IM=${1:-$root/target/release/ideamill}
# Absolute: the runs below start in a scratch directory.
IM=$(realpath -e "$IM" 2>/dev/null) || { echo "no ideamill binary at ${1:-$root/target/release/ideamill}" >&2; exit 1; }
PG=${2:-postgres://postgres@127.0.0.1:5432}
QSRC=${QBENCH_SRC:-$root/../shared/bench/qbench}
QT=${QBENCH_TARGET:-$HOME/.cache/qbench-target}
C=${CONCURRENCY:-64}
# Pickups as River's harness takes them: 50 samples, each after 250 ms idle.
PICKUP="--samples 50 --gap 250ms"
if [ ! -x "$QT/release/qbench" ]; then
  echo "building the River harness (once)..." >&2
  src=$(mktemp -d); cp -r "$QSRC/." "$src/"
  (cd "$src" && CARGO_TARGET_DIR=$QT cargo build --release -q) || { echo "harness build failed" >&2; exit 1; }
fi
QB=$QT/release/qbench
W=$(mktemp -d); trap 'cd /; rm -rf "$W"' EXIT
cd "$W"; export QBENCH_DIR=$W QBENCH_PG=$PG
psql "$PG/postgres" -qtAc "CREATE DATABASE river" >/dev/null 2>&1

num() { grep -o "$1=[0-9.]*" | head -1 | cut -d= -f2; }
fig() { echo "FIG $1 $2"; eval "F_$1=\${2:-0}"; }
# The rate on the line that has it; the whole output goes to stderr too.
rate() { local out; out=$(cat); echo "$out" >&2; echo "$out" | grep 'jobs/s' | grep -o '= [0-9]*' | head -1 | tr -d '= '; }
p50() { grep "$1" | grep -o 'p50 [0-9.]*' | cut -d' ' -f2; }

for db in sqlite pg; do
  r=$(RIVER_FETCH_COOLDOWN_MS=1 timeout 300 "$QB" river throughput $db 20000 "$C" 2>&1 | grep RESULT)
  fig "river_${db}_jobs_per_s" "$(echo "$r" | num jobs_per_s)"
done
for stages in 1 3; do
  fig "ideamill_sqlite_${stages}stage_jobs_per_s" \
    "$(timeout 300 "$IM" bench throughput --stages $stages --concurrency "$C" 2>&1 | rate)"
  fig "ideamill_pg_${stages}stage_jobs_per_s" \
    "$(timeout 300 "$IM" bench throughput --stages $stages --concurrency "$C" --store "$PG/postgres" 2>&1 | rate)"
done
for db in sqlite pg; do
  r=$(RIVER_FETCH_COOLDOWN_MS=1 timeout 300 "$QB" river latency $db 50 2>&1 | grep RESULT)
  fig "river_${db}_pickup_p50_ms" "$(echo "$r" | num p50_ms)"
done
r=$(timeout 300 "$IM" bench pickup $PICKUP 2>&1); echo "$r" >&2
fig ideamill_sqlite_pickup_p50_ms "$(echo "$r" | p50 in-process)"
fig ideamill_sqlite_xproc_p50_ms "$(echo "$r" | p50 'other process')"
r=$(timeout 300 "$IM" bench pickup $PICKUP --store "$PG/postgres" 2>&1); echo "$r" >&2
fig ideamill_pg_pickup_p50_ms "$(echo "$r" | p50 in-process)"
fig ideamill_pg_xproc_p50_ms "$(echo "$r" | p50 'other process')"

ratio() { awk -v a="$2" -v b="$3" -v t="$4" -v name="$1" -v up="$5" 'BEGIN {
  if (a == "" || b + 0 == 0) { printf "RATIO %-34s n/a (a figure is missing: see its run above)\n", name; exit }
  r = a / b; ok = (up == "min") ? (r >= t) : (r <= t)
  printf "RATIO %-34s %.2fx (target %s %.2fx) %s\n", name, r, (up == "min") ? ">=" : "<=", t, ok ? "met" : "MISSED" }'; }
ratio "sqlite 1 stage vs River" "$F_ideamill_sqlite_1stage_jobs_per_s" "$F_river_sqlite_jobs_per_s" 2 min
ratio "pg 1 stage vs River" "$F_ideamill_pg_1stage_jobs_per_s" "$F_river_pg_jobs_per_s" 1.5 min
ratio "sqlite 3 stages vs River" "$F_ideamill_sqlite_3stage_jobs_per_s" "$F_river_sqlite_jobs_per_s" 1 min
ratio "pg 3 stages vs River" "$F_ideamill_pg_3stage_jobs_per_s" "$F_river_pg_jobs_per_s" 1 min
ratio "sqlite pickup p50 vs River" "$F_ideamill_sqlite_pickup_p50_ms" "$F_river_sqlite_pickup_p50_ms" 0.5 max
ratio "pg pickup p50 vs River" "$F_ideamill_pg_pickup_p50_ms" "$F_river_pg_pickup_p50_ms" 0.5 max
ratio "sqlite cross-process p50 vs 1 ms" "$F_ideamill_sqlite_xproc_p50_ms" 1 1 max
