#!/usr/bin/env bash
# A real SLURM cluster on this one machine, for the tests of slurm/ (no systemd, runs as root):
#   - apt: slurm-wlm and munge, when missing (SLURM 22.05 on Debian 12);
#   - a munge key, munged, slurm.conf, slurmctld and two slurmd (logical nodes n1 and n2 on this
#     host: heterogeneous jobs need two nodes), everything under one state folder;
#   - waits until both nodes are idle, then prints `export SLURM_CONF=...` (the clients need it).
# Idempotent: daemons already running from the same state folder are reused.
#
#   scripts/ci/setup-slurm.sh [start]     set up and start (the default)
#   scripts/ci/setup-slurm.sh stop        cancel every job of this cluster, stop the daemons by pid
#   scripts/ci/setup-slurm.sh status      print what runs
#
# Settings (environment):
#   BFCL_EXT_SLURM_STATE       state folder (default /var/lib/bfcl-ext-slurm): key, socket, config,
#                              state, spool, logs, pid files
#   BFCL_EXT_SLURM_CTLD_PORT   slurmctld's port (default 16817; not 6817, so a real SLURM is left alone)
#   BFCL_EXT_SLURM_NODE_PORT   n1's slurmd port (default 17001); n2 uses the next one
#   BFCL_EXT_SLURM_CPUS        CPUs each logical node declares (default 2)
#   BFCL_EXT_SLURM_MEMORY_MB   memory each logical node declares (default 4000)
set -euo pipefail

STATE=${BFCL_EXT_SLURM_STATE:-/var/lib/bfcl-ext-slurm}
CTLD_PORT=${BFCL_EXT_SLURM_CTLD_PORT:-16817}
NODE_PORT=${BFCL_EXT_SLURM_NODE_PORT:-17001}
NODE_CPUS=${BFCL_EXT_SLURM_CPUS:-2}
NODE_MEMORY=${BFCL_EXT_SLURM_MEMORY_MB:-4000}
NODES=(n1 n2)
CONF=$STATE/slurm.conf
RUN_DIR=$STATE/run
KEY_DIR=$STATE/munge-key
LOG_DIR=$STATE/log
SOCKET_DIR=$RUN_DIR
SOCKET=$SOCKET_DIR/munge.socket.2
t_start=$SECONDS

# all_traversable DIR: every folder from / down to DIR lets others in (munged insists on it for
# its socket's folder).
all_traversable() {
    local dir=$1
    while [ -n "$dir" ] && [ "$dir" != / ]; do
        [ -n "$(find "$dir" -maxdepth 0 -perm -o+x 2>/dev/null)" ] || return 1
        dir=$(dirname "$dir")
    done
}

# The munge socket's folder: in the state folder when others can reach it, else a folder in /tmp
# named after the state folder (a pytest tmp folder is private: mode 700).
socket_dir() {
    if all_traversable "$STATE"; then
        printf '%s\n' "$STATE/run"
    else
        printf '/tmp/bfcl-ext-munge-%s\n' "$(printf '%s' "$STATE" | cksum | cut -d' ' -f1)"
    fi
}

log() { printf 'setup-slurm: [%3ds] %s\n' "$((SECONDS - t_start))" "$*" >&2; }
die() {
    printf 'setup-slurm: error: %s\n' "$*" >&2
    exit 1
}

# The pid in file $1 when that process is alive, else nothing (and status 1).
live_pid() {
    local pid
    [ -s "$1" ] || return 1
    pid=$(head -n 1 "$1")
    case $pid in '' | *[!0-9]*) return 1 ;; esac
    kill -0 "$pid" 2>/dev/null || return 1
    printf '%s\n' "$pid"
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null && command -v mungekey >/dev/null; then
        return
    fi
    [ "$(id -u)" = 0 ] || die "slurm-wlm and munge are missing and installing them needs root (apt-get)"
    log "installing slurm-wlm and munge (apt)"
    apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >"$STATE/apt.log" 2>&1 \
        || { tail -n 20 "$STATE/apt.log" >&2; die "apt-get install slurm-wlm munge failed"; }
    # Debian's packages may start daemons of their own where an init system runs; there is none here.
}

start_munge() {
    if live_pid "$RUN_DIR/munged.pid" >/dev/null && [ -S "$SOCKET" ]; then
        log "munged already running"
        return
    fi
    install -d -m 0700 "$KEY_DIR"
    install -d -m 0755 "$RUN_DIR" "$SOCKET_DIR" # munged refuses a socket folder that others cannot traverse
    if [ ! -s "$KEY_DIR/munge.key" ]; then
        mungekey -c -k "$KEY_DIR/munge.key" || die "mungekey failed"
        chmod 0600 "$KEY_DIR/munge.key"
    fi
    rm -f "$SOCKET" "$SOCKET.lock"
    munged --key-file="$KEY_DIR/munge.key" --socket="$SOCKET" --pid-file="$RUN_DIR/munged.pid" \
        --log-file="$LOG_DIR/munged.log" --seed-file="$KEY_DIR/munged.seed" \
        || { tail -n 20 "$LOG_DIR/munged.log" >&2 || true; die "munged did not start"; }
    for _ in $(seq 1 50); do
        [ -S "$SOCKET" ] && live_pid "$RUN_DIR/munged.pid" >/dev/null && { log "munged running"; return; }
        sleep 0.1
    done
    tail -n 20 "$LOG_DIR/munged.log" >&2 || true
    die "munged did not create its socket $SOCKET"
}

write_config() {
    local host
    host=$(hostname -s)
    {
        printf '# Written by scripts/ci/setup-slurm.sh: a test cluster on one host, two logical nodes.\n'
        printf 'ClusterName=bfclext\n'
        printf 'SlurmctldHost=%s(127.0.0.1)\n' "$host"
        printf 'SlurmctldPort=%s\n' "$CTLD_PORT"
        printf 'AuthType=auth/munge\nCredType=cred/munge\nAuthInfo=socket=%s\n' "$SOCKET"
        printf 'SlurmUser=root\nSlurmdUser=root\n'
        printf 'ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n'
        printf 'JobAcctGatherType=jobacct_gather/none\nAccountingStorageType=accounting_storage/none\n'
        printf 'JobCompType=jobcomp/none\nMpiDefault=none\n'
        printf 'SelectType=select/cons_tres\nSelectTypeParameters=CR_Core_Memory\n'
        # Without DefMemPerCPU a job takes a whole node's memory; without bf_interval=1 a dependent
        # job waits up to 30 s for the backfill pass.
        printf 'DefMemPerCPU=512\nSchedulerParameters=bf_interval=1\n'
        # Trust the declared CPUs and memory, whatever this machine has.
        printf 'SlurmdParameters=config_overrides\n'
        printf 'ReturnToService=2\nKillWait=30\nMinJobAge=300\nMailProg=/bin/true\n'
        printf 'StateSaveLocation=%s/ctld\n' "$STATE"
        printf 'SlurmdSpoolDir=%s/spool/%%n\n' "$STATE"
        printf 'SlurmctldPidFile=%s/slurmctld.pid\n' "$RUN_DIR"
        printf 'SlurmdPidFile=%s/slurmd-%%n.pid\n' "$RUN_DIR"
        printf 'SlurmctldLogFile=%s/slurmctld.log\n' "$LOG_DIR"
        printf 'SlurmdLogFile=%s/slurmd-%%n.log\n' "$LOG_DIR"
        local i=0 node
        for node in "${NODES[@]}"; do
            printf 'NodeName=%s NodeHostname=%s NodeAddr=127.0.0.1 Port=%s CPUs=%s RealMemory=%s State=UNKNOWN\n' \
                "$node" "$host" "$((NODE_PORT + i))" "$NODE_CPUS" "$NODE_MEMORY"
            i=$((i + 1))
        done
        printf 'PartitionName=debug Nodes=%s Default=YES MaxTime=INFINITE State=UP\n' "$(IFS=,; echo "${NODES[*]}")"
    } >"$CONF.tmp"
    mv -f "$CONF.tmp" "$CONF"
}

# Start "$@" in the background, detached from our terminal and pipes; its pid goes to file $1.
start_daemon() {
    local pid_file=$1 log_file=$2
    shift 2
    nohup "$@" </dev/null >>"$log_file" 2>&1 &
    printf '%s\n' "$!" >"$pid_file"
}

start_slurm() {
    mkdir -p "$STATE/ctld" "$LOG_DIR"
    local node
    for node in "${NODES[@]}"; do mkdir -p "$STATE/spool/$node"; done
    if ! live_pid "$RUN_DIR/slurmctld.started" >/dev/null; then
        write_config
        log "starting slurmctld (port $CTLD_PORT, config $CONF)"
        start_daemon "$RUN_DIR/slurmctld.started" "$LOG_DIR/slurmctld.stdout" slurmctld -D -i -f "$CONF"
    else
        log "slurmctld already running"
    fi
    for node in "${NODES[@]}"; do
        if live_pid "$RUN_DIR/slurmd-$node.started" >/dev/null; then
            log "slurmd $node already running"
            continue
        fi
        log "starting slurmd $node"
        start_daemon "$RUN_DIR/slurmd-$node.started" "$LOG_DIR/slurmd-$node.stdout" slurmd -D -N "$node" -f "$CONF"
    done
}

wait_idle() {
    local states deadline=$((SECONDS + 60))
    export SLURM_CONF=$CONF
    while [ "$SECONDS" -lt "$deadline" ]; do
        for daemon in slurmctld "${NODES[@]/#/slurmd-}"; do
            if ! live_pid "$RUN_DIR/$daemon.started" >/dev/null; then
                tail -n 20 "$LOG_DIR/$daemon.log" "$LOG_DIR/$daemon.stdout" >&2 2>/dev/null || true
                die "$daemon exited while starting (logs in $LOG_DIR)"
            fi
        done
        states=$(sinfo -h -N -o '%N=%t' 2>/dev/null | sort -u | tr '\n' ' ' || true)
        if [ "$(grep -o '=idle\b' <<<"$states" | wc -l)" -ge "${#NODES[@]}" ]; then
            log "nodes idle: $states"
            return
        fi
        # A node left down or drained by an earlier run of the same state folder: bring it back.
        if grep -Eq '=(down|drain|drng|drained)' <<<"$states"; then
            scontrol update NodeName="$(IFS=,; echo "${NODES[*]}")" State=RESUME >/dev/null 2>&1 || true
        fi
        sleep 0.5
    done
    tail -n 20 "$LOG_DIR/slurmctld.log" >&2 2>/dev/null || true
    die "the nodes did not become idle within 60 s (sinfo: ${states:-no answer}; logs in $LOG_DIR)"
}

# stop_pid_files FILE...: TERM the processes named in those pid files (together), wait up to
# 15 s, then KILL what is left.
stop_pid_files() {
    local file pid pids=() left
    for file in "$@"; do
        if pid=$(live_pid "$file"); then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
    done
    for _ in $(seq 1 150); do
        left=()
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && left+=("$pid"); done
        [ "${#left[@]}" -eq 0 ] && break
        sleep 0.1
    done
    for pid in "${left[@]}"; do
        log "pid $pid ignored SIGTERM: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    done
    [ "${#pids[@]}" -eq 0 ] || log "stopped pids ${pids[*]} ($(printf '%s ' "${@##*/}"))"
    rm -f "$@"
}

stop_all() {
    if [ -f "$CONF" ] && live_pid "$RUN_DIR/slurmctld.started" >/dev/null; then
        export SLURM_CONF=$CONF
        local jobs
        jobs=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ' || true)
        if [ -n "${jobs// /}" ]; then
            log "cancelling jobs still queued or running: $jobs"
            # shellcheck disable=SC2086  # a list of job ids
            scancel $jobs 2>/dev/null || true
            for _ in $(seq 1 70); do
                [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break
                sleep 0.5
            done
        fi
    fi
    local node slurmds=()
    for node in "${NODES[@]}"; do slurmds+=("$RUN_DIR/slurmd-$node.started"); done
    stop_pid_files "${slurmds[@]}"
    stop_pid_files "$RUN_DIR/slurmctld.started"
    stop_pid_files "$RUN_DIR/munged.pid"
}

status() {
    local daemon pid
    for daemon in munged slurmctld "${NODES[@]/#/slurmd-}"; do
        local file=$RUN_DIR/$daemon.started
        [ "$daemon" = munged ] && file=$RUN_DIR/munged.pid
        if pid=$(live_pid "$file"); then echo "$daemon: running (pid $pid)"; else echo "$daemon: stopped"; fi
    done
    if [ -f "$CONF" ]; then SLURM_CONF=$CONF sinfo -N 2>/dev/null || true; fi
}

case ${1:-start} in
    start)
        mkdir -p "$STATE" "$LOG_DIR"
        STATE=$(cd "$STATE" && pwd)
        CONF=$STATE/slurm.conf RUN_DIR=$STATE/run KEY_DIR=$STATE/munge-key LOG_DIR=$STATE/log
        SOCKET_DIR=$(socket_dir)
        SOCKET=$SOCKET_DIR/munge.socket.2
        [ "${#SOCKET}" -lt 100 ] || die "state folder path too long for a unix socket: $SOCKET"
        install_packages
        start_munge
        start_slurm
        wait_idle
        log "ready (state: $STATE)"
        printf 'export SLURM_CONF=%s\n' "$CONF"
        ;;
    stop)
        [ -d "$STATE" ] && STATE=$(cd "$STATE" && pwd)
        CONF=$STATE/slurm.conf RUN_DIR=$STATE/run
        stop_all
        fallback=$(printf '/tmp/bfcl-ext-munge-%s' "$(printf '%s' "$STATE" | cksum | cut -d' ' -f1)")
        rm -rf "$fallback"
        ;;
    status) status ;;
    *) die "usage: $0 [start|stop|status]" ;;
esac
