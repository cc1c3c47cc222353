#!/usr/bin/env bash
# The daemon's CPU time per small file, user and system apart (and its page faults), for one build or two
# compared: each round mirrors 10,000 files of 4 KiB (written once, before the first
# round) from a fresh state dir to a fresh `upsync emulator` process, and reads the
# daemon's own CPU times (/proc/PID/stat) once the emulator holds every file. With two
# builds the rounds alternate, so that the VM's drift falls on both alike. A round's CPU
# moves by ±15 % on a shared VM, so compare means over many rounds; the system time, which
# instruction counts (bench/instructions.sh) do not see, is the steadier of the two.
#
#   bench/cpu-per-file.sh BINARY [OTHER_BINARY] [ROUNDS] [FILES]   # defaults: -, 12, 10000
#
# The emulator is always the first binary's, so only the daemon differs between builds.
# Set TMPDIR=/dev/shm to keep the files and both databases in memory (what the figures in
# docs/small-file-costs.md use).
set -euo pipefail

first=$(realpath "${1:?usage: bench/cpu-per-file.sh BINARY [OTHER_BINARY] [ROUNDS] [FILES]}")
second=${2:+$(realpath "$2")}
rounds=${3:-12}
files=${4:-10000}
for binary in "$first" ${second:+"$second"}; do
    [ -x "$binary" ] || { echo "no daemon binary at $binary (cargo build --release)" >&2; exit 2; }
done
here=$(dirname "$0")
# shellcheck source=bench/small-files.sh
. "$here/small-files.sh"

work=$(mktemp -d)
emulator=""
daemon=""
cleanup() {
    [ -n "$daemon" ] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null
    small_files_stop_emulator
    rm -rf "$work"
}
trap cleanup EXIT
small_files_make "$work/inbox" "$files"
ticks_per_second=$(getconf CLK_TCK)

# One round of `binary`: prints the daemon's user and system CPU in clock ticks, and its
# minor page faults.
round() {
    local binary=$1 stat
    rm -rf "$work/remote" "$work/state"
    small_files_start "$first" "$work"
    "$binary" run -c "$work/upsync.toml" >"$work/daemon.log" 2>&1 &
    daemon=$!
    small_files_wait_stored "$files" || { echo "see $work/daemon.log" >&2; exit 1; }
    # Fields 14, 15 and 10 of the stat line, counted after the command's parenthesised name.
    stat=$(sed 's/^.*) //' "/proc/$daemon/stat")
    kill -TERM "$daemon"
    wait "$daemon" || true
    daemon=""
    small_files_stop_emulator
    awk '{print $12, $13, $8}' <<<"$stat"
}

results="$work/results"
for ((i = 1; i <= rounds; i++)); do
    for binary in "$first" ${second:+"$second"}; do
        echo "$binary $(round "$binary")" >>"$results"
    done
done
# Per build: the mean and standard deviation, over its rounds, of the CPU per file.
awk -v tps="$ticks_per_second" -v files="$files" '
    {
        if (!($1 in n)) order[++builds] = $1
        n[$1]++; u = $2 / tps / files * 1e6; s = $3 / tps / files * 1e6
        su[$1] += u; su2[$1] += u * u; ss[$1] += s; ss2[$1] += s * s; faults[$1] += $4 / files
    }
    function sd(sum, sum2, k) { return k > 1 ? sqrt((sum2 - sum * sum / k) / (k - 1)) : 0 }
    END {
        for (i = 1; i <= builds; i++) {
            b = order[i]; k = n[b]
            printf "%s: %d rounds: user %.1f ± %.1f µs, system %.1f ± %.1f µs, total %.1f µs, %.2f minor page faults per file\n",
                b, k, su[b] / k, sd(su[b], su2[b], k), ss[b] / k, sd(ss[b], ss2[b], k), (su[b] + ss[b]) / k, faults[b] / k
        }
    }' "$results"
