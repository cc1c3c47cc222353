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

here=$(dirname "$0")
# shellcheck source=bench/small-files.sh
. "$here/small-files.sh"

work=$(mktemp -d)
emulator=""
cleanup() {
    small_files_stop_emulator
    rm -rf "$work/inbox" "$work/remote" "$work/state"
}
trap cleanup EXIT
small_files_make "$work/inbox" "$files"
small_files_start "$binary" "$work"

valgrind --tool=callgrind --fair-sched=yes --callgrind-out-file="$work/callgrind.out" \
    "$binary" run -c "$work/upsync.toml" >"$work/daemon.log" 2>&1 &
daemon=$!
stored=true
small_files_wait_stored "$files" || stored=false
kill -TERM "$daemon"
wait "$daemon" || true
$stored || { echo "see $work" >&2; exit 1; }

total=$(grep -h '^summary:' "$work/callgrind.out" | awk '{print $2}')
echo "instructions: $total in all, $((total / files)) per file ($files files of 4 KiB; $work)"
