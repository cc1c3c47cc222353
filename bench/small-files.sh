# Shared by bench/instructions.sh and bench/cpu-per-file.sh (sourced, not run): a work
# dir of small files for the daemon to mirror to an `upsync emulator` process.
#
#   small_files_make DIR FILES       # FILES × 4 KiB of random bytes in 100 directories of DIR
#   small_files_start EMULATOR WORK  # an emulator storing in WORK/remote (pid in $emulator),
#                                    # and WORK/upsync.toml mirroring WORK/inbox to it
#   small_files_stored               # how many files the emulator stored (empty until it answers)
#   small_files_wait_stored FILES    # waits until it stored FILES; false after 20 minutes
#   small_files_stop_emulator

small_files_make() {
    local inbox=$1 files=$2 per_dir dir count
    per_dir=$(((files + 99) / 100))
    for ((dir = 0; dir < 100 && dir * per_dir < files; dir++)); do
        count=$((files - dir * per_dir < per_dir ? files - dir * per_dir : per_dir))
        mkdir -p "$inbox/d$dir"
        head -c $((count * 4096)) /dev/urandom | (cd "$inbox/d$dir" && split -b 4096 -a 4 -d - small-)
    done
}

small_files_start() {
    local binary=$1 work=$2
    mkdir -p "$work/remote" "$work/state"
    small_files_port=$((20000 + RANDOM % 20000))
    "$binary" emulator --listen "127.0.0.1:$small_files_port" --data "$work/remote" >"$work/emulator.log" 2>&1 &
    emulator=$!
    cat >"$work/upsync.toml" <<EOF
state_dir = "$work/state"

[kifs]
url = "http://127.0.0.1:$small_files_port/kifs"

[[folder]]
path = "$work/inbox"
kifs_directory = "small"
create_directory = true
settle = "0s"
EOF
    for _ in $(seq 50); do
        [ -n "$(small_files_stored)" ] && return 0
        sleep 0.1
    done
    echo "the emulator does not answer; see $work/emulator.log" >&2
    return 1
}

small_files_stored() {
    curl -s "http://127.0.0.1:$small_files_port/kifs/_emulator/stats" | grep -o '"files_stored":[0-9]*' | cut -d: -f2 || true
}

small_files_wait_stored() {
    local files=$1 stored=0
    for _ in $(seq 6000); do
        stored=$(small_files_stored)
        [ "${stored:-0}" -ge "$files" ] && return 0
        sleep 0.2
    done
    echo "the emulator stored ${stored:-0} of $files files" >&2
    return 1
}

small_files_stop_emulator() {
    if [ -n "${emulator:-}" ]; then
        kill "$emulator" 2>/dev/null && wait "$emulator" 2>/dev/null
        emulator=""
    fi
    return 0
}
