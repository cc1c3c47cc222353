#!/usr/bin/env bash
# The shares of the daemon's CPU time, the kernel's included, that the state store's
# operations take while it mirrors many small files to KiFS: what a design that writes
# less per file could save at the most (docs/small-file-costs.md, "Measured: the store's
# share of the CPU"). bench/instructions.sh counts user-space instructions only; this
# samples the CPU with perf, so the system calls and page faults under each operation
# count too.
#
#   bench/cpu-shares.sh [UPSYNC_BINARY] [FILES]     # defaults: target/release/upsync, 10000
#
# The files (4 KiB of random bytes, in 100 directories) are written before the daemon
# starts; an `upsync emulator` process stores them; the daemon runs under `perf record`
# (2,000 samples a second, call stacks unwound from DWARF) until the emulator holds every
# file, then stops on SIGTERM. A sample counts for an operation when the operation is on
# its stack, and for "A > B" when B is called under A. About 1,500 samples: a share moves
# by a point or so between runs. Needs perf; set TMPDIR=/dev/shm to keep the files and
# both databases in memory.
set -euo pipefail

binary=$(realpath "${1:-target/release/upsync}")
files=${2:-10000}
command -v perf >/dev/null || { echo "perf is needed (Debian: apt-get install linux-perf)" >&2; exit 2; }
[ -x "$binary" ] || { echo "no daemon binary at $binary (cargo build --release)" >&2; exit 2; }

here=$(dirname "$0")
# shellcheck source=bench/small-files.sh
. "$here/small-files.sh"

work=$(mktemp -d)
emulator=""
recorder=""
cleanup() {
    [ -n "$recorder" ] && kill "$recorder" 2>/dev/null && wait "$recorder" 2>/dev/null
    small_files_stop_emulator
    rm -rf "$work"
}
trap cleanup EXIT
small_files_make "$work/inbox" "$files"
small_files_start "$binary" "$work"

perf record -q -F 2000 --call-graph dwarf,16384 -o "$work/perf.data" -- \
    "$binary" run -c "$work/upsync.toml" >"$work/daemon.log" 2>&1 &
recorder=$!
small_files_wait_stored "$files" || { cat "$work/daemon.log" >&2; exit 1; }
pkill -TERM -P "$recorder" -f "run -c $work/upsync.toml"
wait "$recorder" || true
recorder=""

# One sample per blank-line-separated stack of `perf script`; the symbols stay mangled,
# so a pattern matches the names' parts as they stand there (e.g. `Store10offer_many`).
perf script -i "$work/perf.data" -F comm,ip,sym --no-demangle 2>/dev/null | awk '
    BEGIN {
        n = split("complete_many|complete_many>TransactionalTrees6commit|complete_many>put_ledger|offer_many|offer_many>TransactionalTrees6commit|offer_many>file_record|claim_more|claim_next|sled", patterns, "|")
    }
    function count(   i, parts) {
        if (stack == "") return
        samples++
        for (i = 1; i <= n; i++) {
            split(patterns[i], parts, ">")
            if (index(stack, parts[1]) && (parts[2] == "" || index(stack, parts[2]))) hits[i]++
        }
        stack = ""
    }
    /^[^ \t]/ { count(); stack = " "; next }
    /^$/ { count(); next }
    { stack = stack " " $2 }
    END {
        count()
        printf "%d samples of the daemon\n", samples
        for (i = 1; i <= n; i++) printf "%6.1f %%  %s\n", 100 * hits[i] / samples, patterns[i]
    }'
