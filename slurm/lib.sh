# shellcheck shell=bash
# Functions shared by the job scripts in slurm/ (sourced, never run). Needs bash 4.3+, coreutils,
# curl; python3 when present (exact shell-style word splitting and port probing; without it,
# plain whitespace splitting and a connect() probe).
#
# The endpoint file (KEY=VALUE lines, sourceable by sh/bash, values never quoted; the same facts
# in endpoint.json next to it) is written by the server job once the server is ready, tmp file then
# rename in the same folder, so a reader sees either no file or a whole one; its last line is
# BFCL_EXT_ENDPOINT_COMPLETE=1. The server job removes it when it ends.

# shellcheck disable=SC2034  # used by the scripts that source this file
BFCL_EXT_ENDPOINT_VERSION=1
SLURM_PORT_BASE=20000 # ports 20000-39999, as bfcl_ext/server.py choose_port
SLURM_PORT_SPAN=20000
# Characters an endpoint value may hold: host names, IPv4/IPv6 addresses, URLs, paths, job ids.
ENDPOINT_VALUE_RE='^[][A-Za-z0-9._:/@%+,~=-]*$'

log() { printf '%s %s: %s\n' "$(date '+%Y-%m-%dT%H:%M:%S.%3N')" "${PROG:-bfcl-slurm}" "$*" >&2; }

# fail CODE MESSAGE: one plain line on stderr, then exit CODE.
fail() {
    local code=$1
    shift
    log "ERROR: $*"
    exit "$code"
}

# Source the site settings file and load its modules. BFCL_EXT_SITE_ENV names the file (default
# slurm/site.env next to this library); a missing default file is not an error.
load_site() {
    local site=${BFCL_EXT_SITE_ENV:-$BFCL_EXT_SLURM_DIR/site.env}
    if [ -f "$site" ]; then
        # shellcheck source=/dev/null
        source "$site"
    elif [ -n "${BFCL_EXT_SITE_ENV:-}" ]; then
        fail 2 "BFCL_EXT_SITE_ENV=$site: file not found"
    fi
    if [ -n "${SITE_MODULES:-}" ]; then
        if ! type module >/dev/null 2>&1; then
            local init
            for init in /etc/profile.d/lmod.sh /etc/profile.d/modules.sh /usr/share/lmod/lmod/init/bash; do
                if [ -f "$init" ]; then
                    set +u
                    # shellcheck disable=SC1090
                    source "$init"
                    set -u
                    break
                fi
            done
        fi
        type module >/dev/null 2>&1 || fail 2 "SITE_MODULES='$SITE_MODULES' but this node has no \`module\` command"
        local modules
        read -r -a modules <<<"$SITE_MODULES"
        set +u
        module load "${modules[@]}" || fail 2 "module load ${modules[*]} failed (SITE_MODULES in $site)"
        set -u
    fi
}

# split_words ARRAY_NAME LABEL TEXT: TEXT's words into the array (shell quoting honoured, nothing
# expanded or evaluated); exit 2 naming LABEL when the quotes do not balance.
split_words() {
    local -n _words=$1
    local label=$2 text=$3
    _words=()
    if command -v python3 >/dev/null 2>&1; then
        local split='import shlex, sys
sys.stdout.write("".join(w + "\0" for w in shlex.split(sys.argv[1])))'
        python3 -c "$split" "$text" >/dev/null 2>&1 || fail 2 "$label cannot be split into words (unbalanced quotes?): $text"
        mapfile -d '' -t _words < <(python3 -c "$split" "$text")
    else
        read -r -a _words <<<"$text"
    fi
}

# is_port_free HOST PORT: nobody listens there (bind test with python3; else a connect test).
is_port_free() {
    if command -v python3 >/dev/null 2>&1; then
        python3 - "$1" "$2" <<'PY'
import errno, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
with socket.socket(family, socket.SOCK_STREAM) as probe:
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind((host, port))
    except OSError as error:
        sys.exit(1 if error.errno in (errno.EADDRINUSE, errno.EACCES) else 2)
PY
    else
        ! (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null
    fi
}

# choose_port BIND WANTED JOB_ID: WANTED if given and free; else the first free port from
# 20000 + JOB_ID % 20000 upward (a requeued job gets the same one when it is free).
choose_port() {
    local bind=$1 wanted=$2 job=$3 start offset candidate
    if [ -n "$wanted" ] && is_port_free "$bind" "$wanted"; then
        printf '%s\n' "$wanted"
        return
    fi
    case $job in '' | *[!0-9]*) job=$(($$ + RANDOM)) ;; esac
    start=$((job % SLURM_PORT_SPAN))
    for ((offset = 0; offset < 200; offset++)); do
        candidate=$((SLURM_PORT_BASE + (start + offset) % SLURM_PORT_SPAN))
        if is_port_free "$bind" "$candidate"; then
            printf '%s\n' "$candidate"
            return
        fi
    done
    return 1
}

# curl_api ARGS...: curl with the bearer key from VLLM_API_KEY, else from the file
# BFCL_EXT_API_KEY_FILE names (read from stdin, never in argv), and no proxy (the server is inside
# the cluster).
curl_api() {
    local key=${VLLM_API_KEY:-}
    if [ -z "$key" ] && [ -n "${BFCL_EXT_API_KEY_FILE:-}" ] && [ -r "$BFCL_EXT_API_KEY_FILE" ]; then
        IFS= read -r key <"$BFCL_EXT_API_KEY_FILE" || true
        key=${key%$'\r'}
    fi
    if [ -n "$key" ]; then
        printf 'header = "Authorization: Bearer %s"\n' "$key" | curl --config - --noproxy '*' "$@"
    else
        curl --noproxy '*' "$@"
    fi
}

# probe_ready BASE_URL NAME: 0 when GET /health answers 200 and GET BASE_URL/models lists NAME.
# Otherwise 1 (not yet) or 2 (up, but NAME is not listed), and PROBE_DETAIL says what was seen.
probe_ready() {
    local base=${1%/} name=$2 root code models ids
    root=${base%/v1}
    PROBE_DETAIL=
    code=$(curl -sS --noproxy '*' -o /dev/null -w '%{http_code}' --max-time 5 "$root/health" 2>&1) || true
    if [ "$code" != 200 ]; then
        PROBE_DETAIL="GET $root/health: ${code:-no answer}"
        [ "$code" = 000 ] && PROBE_DETAIL="GET $root/health: no answer (connection refused or timed out)"
        return 1
    fi
    if ! models=$(curl_api -sS --fail-with-body --max-time 10 "$base/models" 2>&1); then
        PROBE_DETAIL="GET $base/models failed: $(printf '%s' "$models" | tr '\n' ' ' | cut -c1-300)"
        return 1
    fi
    # The ids of data[] (vLLM's permission objects have ids too: "modelperm-...").
    if command -v python3 >/dev/null 2>&1; then
        ids=$(python3 -c 'import json, sys
try:
    print("\n".join(str(m.get("id")) for m in json.load(sys.stdin).get("data", [])))
except Exception:
    pass' <<<"$models")
    else
        ids=$(printf '%s' "$models" | tr -d ' \t\r\n' | grep -o '"id":"[^"]*"' | sed 's/^"id":"//; s/"$//' | grep -v '^modelperm-' || true)
    fi
    if grep -qxF -- "$name" <<<"$ids"; then
        return 0
    fi
    ids=$(paste -sd, - <<<"$ids")
    # shellcheck disable=SC2034  # read by the caller
    PROBE_DETAIL="the server lists ${ids:-no model}, not '$name'"
    return 2
}

# job_state JOB_ID: PENDING, RUNNING, ... while SLURM knows the job as queued or running;
# ENDED once it left the queue; UNKNOWN when squeue cannot say (no SLURM, controller down).
job_state() {
    local out
    if [ -z "$1" ] || ! command -v squeue >/dev/null 2>&1; then
        echo UNKNOWN
        return
    fi
    if out=$(squeue -h -j "$1" -o %T 2>&1); then
        out=$(head -n 1 <<<"$out")
        echo "${out:-ENDED}"
    elif grep -q 'Invalid job id' <<<"$out"; then
        echo ENDED
    else
        echo UNKNOWN
    fi
}

# signal_for_batch_only: 0 when a signal this script just received was meant for the batch shell
# alone (a `--signal=B:...` time-limit warning, `scancel --batch`, or a parent script passing it
# on): the job still RUNNING. When the job is being cancelled, has timed out or is preempted,
# SLURM signals every process of the job, bfcl-ext included, and passing the signal on would
# deliver it twice (bfcl-ext takes a second SIGTERM more than 2 s after the first as "stop now").
signal_for_batch_only() {
    [ -z "${SLURM_JOB_ID:-}" ] && return 0
    local state
    state=$(job_state "$SLURM_JOB_ID")
    [ "$state" = RUNNING ] || [ "$state" = UNKNOWN ]
}

# job_is_live STATE: the state of a job that has not ended (yet).
job_is_live() {
    case $1 in
        PENDING | CONFIGURING | RUNNING | COMPLETING | SUSPENDED | REQUEUED | REQUEUE_HOLD | RESIZING | SIGNALING | STAGE_OUT | UNKNOWN) return 0 ;;
        *) return 1 ;;
    esac
}

# write_kv_file FILE KEY=VALUE...: KEY=VALUE lines (plus endpoint.json-style JSON when FILE ends
# in .env: FILE with .json), each written to a temporary file in the same folder then renamed.
write_kv_file() {
    local file=$1 dir tmp pair json
    shift
    dir=$(dirname "$file")
    mkdir -p "$dir"
    for pair in "$@"; do
        [[ $pair == [A-Z_]*=* ]] || fail 1 "internal: bad pair '$pair'"
        [[ ${pair#*=} =~ $ENDPOINT_VALUE_RE ]] || fail 2 "value not allowed in $file: '$pair'"
    done
    if [[ $file == *.env ]]; then
        json=${file%.env}.json
        tmp=$(mktemp "$dir/.${json##*/}.XXXXXX")
        {
            printf '{'
            local first=1
            for pair in "$@"; do
                [ "$first" = 1 ] || printf ', '
                first=0
                printf '"%s": "%s"' "${pair%%=*}" "${pair#*=}"
            done
            printf '}\n'
        } >"$tmp"
        chmod 0644 "$tmp"
        mv -f "$tmp" "$json"
    fi
    tmp=$(mktemp "$dir/.${file##*/}.XXXXXX")
    {
        printf '# written by bfcl-ext slurm/ job scripts; KEY=VALUE, sourceable\n'
        printf '%s\n' "$@"
        printf 'BFCL_EXT_ENDPOINT_COMPLETE=1\n'
    } >"$tmp"
    chmod 0644 "$tmp"
    mv -f "$tmp" "$file"
}

# read_kv_file FILE ARRAY_NAME: the file's KEY=VALUE lines into the associative array; status 0
# only for a whole file (its BFCL_EXT_ENDPOINT_COMPLETE=1 line read). Nothing is evaluated.
read_kv_file() {
    local -n _kv=$2
    local key value
    _kv=()
    [ -f "$1" ] && [ ! -L "$1" ] && [ -O "$1" ] || return 1  # never a file another user could have planted
    {
        while IFS='=' read -r key value; do
            case $key in '' | '#'*) continue ;; esac
            [[ $key =~ ^[A-Z_][A-Z0-9_]*$ ]] || continue
            _kv["$key"]=$value
        done <"$1"
    } 2>/dev/null || return 1
    [ "${_kv[BFCL_EXT_ENDPOINT_COMPLETE]:-}" = 1 ]
}

# remove_if_owned FILE JOB_ID: remove FILE (and its .json) only if it names JOB_ID as server job.
remove_if_owned() {
    local -A _owned=()
    if read_kv_file "$1" _owned && [ "${_owned[SERVER_JOB_ID]:-}" = "$2" ]; then
        rm -f "$1" "${1%.env}.json"
    fi
}

# show_log_tail FILE [LINES]: the last lines of a log, indented, for an error report.
show_log_tail() {
    local file=$1 lines=${2:-40}
    if [ -n "$file" ] && [ -r "$file" ]; then
        printf '%s\n' "---- last $lines lines of $file ----" >&2
        tail -n "$lines" "$file" | sed 's/^/    | /' >&2
        printf '%s\n' "---- end of $file ----" >&2
    else
        printf '%s\n' "(no server log at ${file:-an unknown path})" >&2
    fi
}

# absolute PATH: PATH made absolute (the folder need not exist).
absolute() {
    case $1 in
        /*) printf '%s\n' "$1" ;;
        *) printf '%s/%s\n' "$PWD" "${1#./}" ;;
    esac
}

# The folders and files of one evaluation, all under the output folder.
set_paths() {
    OUTPUT_DIR=$(absolute "${BFCL_EXT_OUTPUT_DIR:-bfcl-results}")
    local problem
    problem=$(path_problem "$OUTPUT_DIR") || fail 2 "$problem"
    OUTPUT_DIR=$(realpath -m -- "$OUTPUT_DIR") # from here on no link on the way can be swapped
    problem=$(path_problem "$OUTPUT_DIR") || fail 2 "$problem"
    SLURM_OUT=$OUTPUT_DIR/slurm
    ENDPOINT_FILE=$(absolute "${BFCL_EXT_ENDPOINT_FILE:-$SLURM_OUT/endpoint.env}")
    STATUS_FILE=${ENDPOINT_FILE%.env}
    STATUS_FILE=${STATUS_FILE%/*}/server-status.env
    (umask 027 && mkdir -p "$SLURM_OUT" "${ENDPOINT_FILE%/*}") || fail 2 "cannot create $SLURM_OUT"
    local dir
    for dir in "$OUTPUT_DIR" "$SLURM_OUT" "${ENDPOINT_FILE%/*}"; do
        problem=$(private_dir_problem "$dir") || fail 2 "$problem"
    done
}

# path_problem PATH: status 0 when no other user can redirect or replace PATH: every symbolic link
# on the way was made by this user or root, and every existing folder above PATH belongs to this
# user or root and, if everyone may write to it, has the sticky bit (as /tmp does). A folder above
# it that its group may write to is trusted (a project folder). Otherwise 1 and one line on stdout.
path_problem() {
    local path=$1 prefix='' owner mode i
    local -a parts
    IFS=/ read -r -a parts <<<"${path#/}"
    for ((i = 0; i < ${#parts[@]}; i++)); do
        [ -n "${parts[i]}" ] || continue
        prefix=$prefix/${parts[i]}
        if [ -L "$prefix" ]; then
            owner=$(stat -c %u -- "$prefix")
            if [ "$owner" != "$(id -u)" ] && [ "$owner" != 0 ]; then
                printf '%s is a symbolic link made by %s (uid %s), not by you: another user could point it elsewhere; use a path of your own\n' \
                    "$prefix" "$(stat -c %U -- "$prefix")" "$owner"
                return 1
            fi
        fi
        [ -e "$prefix" ] || break
        [ "$i" -lt $((${#parts[@]} - 1)) ] || break # PATH itself: private_dir_problem's rules
        owner=$(stat -L -c %u -- "$prefix")
        mode=$(stat -L -c %a -- "$prefix")
        if [ "$owner" != "$(id -u)" ] && [ "$owner" != 0 ]; then
            printf '%s, above %s, belongs to %s (uid %s): they could move or replace what is in it; use a folder under one of your own\n' \
                "$prefix" "$path" "$(stat -L -c %U -- "$prefix")" "$owner"
            return 1
        fi
        if (((8#$mode & 8#1002) == 8#0002)); then
            printf '%s, above %s, is writable by everyone without the sticky bit (mode %s): use a folder under one of your own\n' \
                "$prefix" "$path" "$mode"
            return 1
        fi
    done
}

# private_dir_problem DIR: status 0 when DIR is a folder of this user that no other user can write
# to (so nobody else can plant an endpoint file, a key file or a symlink in it); otherwise 1 and
# one line on stdout naming DIR and what is wrong.
private_dir_problem() {
    local dir=$1 owner mode
    if [ ! -d "$dir" ]; then
        printf '%s is not a folder\n' "$dir"
        return 1
    fi
    owner=$(stat -L -c %u -- "$dir")
    mode=$(stat -L -c %a -- "$dir")
    if [ "$owner" != "$(id -u)" ]; then
        printf '%s belongs to %s (uid %s), not to you (%s): another user could plant files there; use a folder of your own\n' \
            "$dir" "$(stat -L -c %U -- "$dir")" "$owner" "$(id -un)"
        return 1
    fi
    if (((8#$mode & 8#022) != 0)); then
        printf '%s is writable by group or others (mode %s): run chmod go-w %s, or use a folder of your own\n' "$dir" "$mode" "$dir"
        return 1
    fi
}

# The server's one-time key (issue: a shared node must not serve anyone who can reach it). The
# server job makes it when the user gave none and hands it to the runner in a file only the user
# can read, next to the endpoint file but never in it, nor in argv, a log or the manifest.
key_file_for() { printf '%s/server-%s.key\n' "$SLURM_OUT" "$1"; }

# make_server_key FILE: a new random key (64 hex digits) in FILE, mode 0600; the key on stdout.
make_server_key() {
    local key tmp
    key=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
    [[ $key =~ ^[0-9a-f]{64}$ ]] || fail 1 "cannot read 32 random bytes from /dev/urandom"
    tmp=$(umask 077 && mktemp "${1%/*}/.${1##*/}.XXXXXX")
    printf '%s\n' "$key" >"$tmp"
    chmod 0600 "$tmp"
    mv -f "$tmp" "$1"
    printf '%s\n' "$key"
}

# read_server_key FILE: the key in FILE on stdout; status 1 when there is no such file, 2 (and a
# line on stdout saying why) when it is not a plain file of this user that only the user can read.
read_server_key() {
    local file=$1 mode
    [ -e "$file" ] || [ -L "$file" ] || return 1
    if [ -L "$file" ] || [ ! -f "$file" ] || [ ! -O "$file" ]; then
        printf '%s is not a plain file of yours: not read\n' "$file"
        return 2
    fi
    mode=$(stat -c %a -- "$file")
    if (((8#$mode & 8#077) != 0)); then
        printf '%s can be read by group or others (mode %s): not used; the key may be known to others\n' "$file" "$mode"
        return 2
    fi
    head -n 1 -- "$file"
}

# server_job_state JOB_ID: job_state, except for a server started by hand (job id local-PID): RUNNING
# while that process lives on this node, else ENDED.
server_job_state() {
    local pid
    case $1 in
        local-*)
            pid=${1#local-}
            if [[ $pid =~ ^[1-9][0-9]*$ ]] && [ -O "/proc/$pid" ] \
                && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'server\.sbatch'; then
                echo RUNNING
            else
                echo ENDED
            fi
            ;;
        *) job_state "$1" ;;
    esac
}

# port_listeners PORT: the uids of the sockets listening on PORT on this node (Linux's
# /proc/net/tcp and tcp6), one per line; nothing when none listens or /proc cannot say.
port_listeners() {
    local hex
    hex=$(printf '%04X' "$1")
    cat /proc/net/tcp /proc/net/tcp6 2>/dev/null \
        | awk -v port="$hex" '$4 == "0A" { n = split($2, a, ":"); if (toupper(a[n]) == port) print $8 }' | sort -u
}

# foreign_listener PORT: status 0, with the uid on stdout, when a socket of another user listens
# on PORT on this node (it took the port between the check and the server's bind).
foreign_listener() {
    local uid
    for uid in $(port_listeners "$1"); do
        if [ "$uid" != "$(id -u)" ]; then
            printf '%s\n' "$uid"
            return 0
        fi
    done
    return 1
}

# claim_folder LOCK JOB_ID: one server job per output folder. LOCK is created holding JOB_ID with
# link(2), which is atomic on NFS too; a lock naming this job already (a requeue) is kept. A lock of
# a job SLURM says has ended is stale: it is moved aside (rename: one taker wins) and claimed again.
# Status 1, with CLAIM_HOLDER set to "JOB (STATE)", when a job that has not ended -- or one SLURM
# cannot tell about -- holds it.
claim_folder() {
    local lock=$1 job=$2 tmp holder state aside attempt
    CLAIM_HOLDER=
    tmp=$(mktemp "$lock.new.XXXXXX")
    printf '%s\n' "$job" >"$tmp"
    for attempt in 1 2 3 4 5; do
        if ln -T "$tmp" "$lock" 2>/dev/null; then
            rm -f "$tmp"
            return 0
        fi
        holder=
        [ -f "$lock" ] && [ -O "$lock" ] && holder=$(head -n 1 -- "$lock" 2>/dev/null || true)
        if [ -n "$holder" ] && [ "$holder" = "$job" ]; then
            rm -f "$tmp"
            return 0
        fi
        state=NOT_A_JOB # a lock that names no job (garbage, or not ours) is stale
        [[ $holder =~ ^(local-)?[0-9]+$ ]] && state=$(server_job_state "$holder")
        if [ "$state" != NOT_A_JOB ] && job_is_live "$state"; then
            CLAIM_HOLDER="$holder ($state)"
            rm -f "$tmp"
            return 1
        fi
        log "taking over the claim on ${lock%/*} of server job ${holder:-?} ($state)"
        aside=$lock.stale.$job.$attempt
        if mv -T "$lock" "$aside" 2>/dev/null; then
            if [ "$(head -n 1 -- "$aside" 2>/dev/null || true)" != "$holder" ]; then
                ln -T "$aside" "$lock" 2>/dev/null || true # another job claimed it meanwhile: put it back
            fi
            rm -f "$aside"
        fi
    done
    rm -f "$tmp"
    CLAIM_HOLDER="${holder:-?} (could not take the lock over)"
    return 1
}

# release_folder LOCK JOB_ID: remove LOCK if it still holds JOB_ID.
release_folder() {
    if [ -f "$1" ] && [ -O "$1" ] && [ "$(head -n 1 -- "$1" 2>/dev/null || true)" = "$2" ]; then
        rm -f "$1"
    fi
}

# Checks shared by submit.sh and the job scripts: plain values only (never bash arithmetic on a
# setting, which would run $(...) in it).
# is_whole_number VALUE MAX: VALUE is a plain decimal number, at most MAX.
is_whole_number() { # no leading zero: bash arithmetic would read 08 as octal
    [[ $1 =~ ^(0|[1-9][0-9]{0,8})$ ]] && [ "$1" -le "$2" ]
}

# is_slurm_time VALUE: a time limit sbatch --time accepts: minutes, minutes:seconds,
# hours:minutes:seconds, days-hours, days-hours:minutes, days-hours:minutes:seconds, or UNLIMITED.
is_slurm_time() {
    [[ $1 =~ ^[0-9]{1,7}(:[0-9]{1,2}){0,2}$ || $1 =~ ^[0-9]{1,5}-[0-9]{1,2}(:[0-9]{1,2}){0,2}$ || ${1^^} =~ ^(UNLIMITED|INFINITE)$ ]]
}

# is_slurm_memory VALUE: a sbatch --mem value: a whole number with an optional K, M, G or T suffix.
is_slurm_memory() {
    [[ $1 =~ ^[0-9]{1,12}[KMGTkmgt]?$ ]]
}

# Image digests for the manifest. hash_image_in_background REF: when REF names an image file (a
# SIF), sha256sum it in the background -- a server image can be gigabytes on a shared filesystem,
# and the job has waiting to do meanwhile. take_image_reference then sets IMAGE_REFERENCE to
# REF@sha256:HEX (bfcl-ext records the digest), or to REF as it is (not a file, unreadable, or
# already REF@sha256:...). Call take_image_reference in this shell, not in $(...): it waits for
# a child of this shell.
hash_image_in_background() {
    IMAGE_REFERENCE=$1
    HASH_PID=
    HASH_OUT=
    case $1 in '' | *@sha256:*) return 0 ;; esac
    { [ -f "$1" ] && [ -r "$1" ]; } || return 0
    HASH_OUT=$(mktemp "${TMPDIR:-/tmp}/bfcl-image-digest.XXXXXX")
    sha256sum -- "$1" >"$HASH_OUT" 2>/dev/null &
    HASH_PID=$!
}

take_image_reference() {
    local hex=
    [ -n "${HASH_PID:-}" ] || return 0
    wait "$HASH_PID" 2>/dev/null || true
    hex=$(cut -d' ' -f1 "$HASH_OUT" 2>/dev/null || true)
    rm -f "$HASH_OUT"
    HASH_PID=
    if [[ $hex =~ ^[0-9a-f]{64}$ ]]; then
        IMAGE_REFERENCE="$IMAGE_REFERENCE@sha256:$hex"
    fi
}

# stop_image_hash: on exit, no hashing left behind.
stop_image_hash() {
    if [ -n "${HASH_PID:-}" ]; then kill "$HASH_PID" 2>/dev/null || true; fi
    if [ -n "${HASH_OUT:-}" ]; then rm -f "$HASH_OUT"; fi
}
