#!/usr/bin/env bash
# Counts the instructions the daemon runs to mirror many small files to KiFS, under
# valgrind's callgrind: an exact figure where CPU time is not (a shared VM moves the
# daemon's CPU per file by ±15 % between runs, and has no hardware counters to count
# instructions with). Compare two builds by running this for each, two or three times:
# the count moves by 1-3 % between runs of one build, with the size of the batches.
#
#   bench/instructions.sh [UPSYNC_BINARY] [FILES]     # defaults: target/release/upsync, 10000
#
# The files (4 KiB of random bytes, in 100 directories) are written before the daemon
# starts; an `upsync emulator` process stores them; the daemon runs under callgrind
# (`--fair-sched=yes`: without it, threads spinning on a lock while its holder waits for
# its turn add up to three times the work) until the emulator holds every file, then
# stops on SIGTERM. Needs valgrind. Leaves `callgrind.out` in the work dir it names, for
# `callgrind_annotate --inclusive=yes`.
set -euo pipefail

binary=$(realpath "${1:-target/release/upsync}")
files=${2:-10000}
command -v valgrind >/dev/null || { echo "valgrind is needed (Debian: apt-get install valgrind)" >&2; exit 2; }
[ -x "$binary" ] || { echo "no daemon binary at $binary (cargo build --release)" >&2; exit 2; }

work=$(mktemp -d)
emulator=""
cleanup() {
    [ -n "$emulator" ] && kill "$emulator" 2>/dev/null && wait "$emulator" 2>/dev/null
    rm -rf "$work/inbox" "$work/remote" "$work/state"
}
trap cleanup EXIT
mkdir -p "$work/inbox" "$work/remote" "$work/state"

per_dir=$(((files + 99) / 100))
for ((dir = 0; dir < 100 && dir * per_dir < files; dir++)); do
    count=$((files - dir * per_dir < per_dir ? files - dir * per_dir : per_dir))
    mkdir "$work/inbox/d$dir"
    head -c $((count * 4096)) /dev/urandom | (cd "$work/inbox/d$dir" && split -b 4096 -a 4 -d - small-)
done

port=$((20000 + RANDOM % 20000))
"$binary" emulator --listen "127.0.0.1:$port" --data "$work/remote" >"$work/emulator.log" 2>&1 &
emulator=$!
cat >"$work/upsync.toml" <<EOF
state_dir = "$work/state"

[kifs]
url = "http://127.0.0.1:$port/kifs"

[[folder]]
path = "$work/inbox"
kifs_directory = "instructions"
create_directory = true
settle = "0s"
EOF
# The KiFS emulator's count of the files it stored (nothing until it answers).
stored() {
    curl -s "http://127.0.0.1:$port/kifs/_emulator/stats" | grep -o '"files_stored":[0-9]*' | cut -d: -f2 || true
}
for _ in $(seq 50); do
    [ -n "$(stored)" ] && break
    sleep 0.1
done

valgrind --tool=callgrind --fair-sched=yes --callgrind-out-file="$work/callgrind.out" \
    "$binary" run -c "$work/upsync.toml" >"$work/daemon.log" 2>&1 &
daemon=$!
stored=0
for _ in $(seq 6000); do
    stored=$(stored)
    [ "${stored:-0}" -ge "$files" ] && break
    sleep 0.2
done
kill -TERM "$daemon"
wait "$daemon" || true
[ "${stored:-0}" -ge "$files" ] || { echo "the emulator stored $stored of $files files; see $work" >&2; exit 1; }

total=$(grep -h '^summary:' "$work/callgrind.out" | awk '{print $2}')
echo "instructions: $total in all, $((total / files)) per file ($files files of 4 KiB; $work)"
