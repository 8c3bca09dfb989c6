#!/usr/bin/env bash
# Submit a bfcl-ext evaluation to SLURM: the server and runner jobs (two-job), one heterogeneous
# job (hetjob), or one job on one node (single), with the site settings of slurm/site.env and the
# user's model, categories, GPUs and time limit. Prints the job ids and where results will land.
#
#   slurm/submit.sh --model NAME --categories LIST [options] [-- more sbatch options]
#
#   --mode two-job|hetjob|single   how to run (default two-job)
#   --model NAME                   the model's name: served under it and scored as it (BFCL_EXT_MODEL)
#   --model-path PATH              what the server loads, a hub id or a folder (default NAME)
#   --categories LIST              BFCL categories or collections, e.g. simple_python,multiple
#   --output DIR                   results folder on the shared filesystem (default
#                                  SITE_RESULTS_ROOT or ./bfcl-results, then /<model name>); the same
#                                  folder again resumes an unfinished evaluation
#   --partition P  --account A  --qos Q      (default: site settings)
#   --runner-partition P           the runner's (no GPU) partition (default SITE_RUNNER_PARTITION, else --partition)
#   --gpus N                       GPUs for the server (default SITE_GPUS; 0: none)
#   --time T                       time limit of every job (default SITE_TIME)
#   --runner-time T                the runner's, two-job mode (default --time)
#   --signal-lead S                SIGTERM S seconds before the runner's time limit (default SITE_SIGNAL_LEAD)
#   --limit N                      only the first N entries per category (a smoke run)
#   --no-dependency                two-job: submit the runner without --dependency=after:<server>
#   --keep-server                  two-job: the runner leaves the server job running when it ends
#   --single-mode pair|managed     single: server and runner side by side (default), or bfcl-ext's managed mode
#   --site FILE                    site settings file (default slurm/site.env)
#   --dry-run                      print the sbatch commands, submit nothing
# Anything after `--` goes to every sbatch call. Other settings travel in the environment
# (sbatch --export=ALL): BFCL_EXT_* (e.g. BFCL_EXT_NUM_THREADS), VLLM_API_KEY, SERVE_* (e.g.
# SERVE_TOOL_CALL_PARSER, SERVE_MAX_MODEL_LEN for the vLLM image), BFCL_EXT_SERVER_COMMAND and
# BFCL_EXT_RUNNER_COMMAND. Exit: 0 submitted, 2 bad arguments, 1 sbatch failed.
set -euo pipefail

PROG=bfcl-submit
SLURM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=slurm/lib.sh
source "$SLURM_DIR/lib.sh" # the checks the job scripts make, made here before anything is submitted

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}
die() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit 2
}

mode=two-job model=${BFCL_EXT_MODEL:-} model_path=${SERVE_MODEL:-} categories=${BFCL_EXT_TEST_CATEGORY:-}
output=${BFCL_EXT_OUTPUT_DIR:-} partition='' runner_partition='' account='' qos='' gpus='' time_limit='' runner_time='' lead='' limit=''
dependency=1 cancel=1 single_mode=${BFCL_EXT_SINGLE_MODE:-pair} site=${BFCL_EXT_SITE_ENV:-$SLURM_DIR/site.env}
dry_run=0 sbatch_user=()
while [ $# -gt 0 ]; do
    option=$1
    case $option in
        -h | --help) usage; exit 0 ;;
        --dry-run) dry_run=1; shift; continue ;;
        --no-dependency) dependency=0; shift; continue ;;
        --keep-server) cancel=0; shift; continue ;;
        --) shift; sbatch_user=("$@"); break ;;
        --*=*) set -- "${option%%=*}" "${option#*=}" "${@:2}"; continue ;;
    esac
    [ $# -ge 2 ] || die "$option needs a value"
    value=$2
    case $option in
        --mode) mode=$value ;;
        --model) model=$value ;;
        --model-path) model_path=$value ;;
        --categories | --test-category) categories=$value ;;
        --output | --output-dir) output=$value ;;
        --partition) partition=$value ;;
        --runner-partition) runner_partition=$value ;;
        --account) account=$value ;;
        --qos) qos=$value ;;
        --gpus) gpus=$value ;;
        --time) time_limit=$value ;;
        --runner-time) runner_time=$value ;;
        --signal-lead) lead=$value ;;
        --limit) limit=$value ;;
        --single-mode) single_mode=$value ;;
        --site) site=$value ;;
        *) die "unknown option $option (see --help)" ;;
    esac
    shift 2
done

[ -f "$site" ] || die "site settings file not found: $site"
site=$(cd "$(dirname "$site")" && pwd)/$(basename "$site")
# shellcheck source=slurm/site.env
source "$site"

partition=${partition:-$SITE_PARTITION}
runner_partition=${runner_partition:-${SITE_RUNNER_PARTITION:-$partition}}
account=${account:-$SITE_ACCOUNT}
qos=${qos:-$SITE_QOS}
gpus=${gpus:-$SITE_GPUS}
time_limit=${time_limit:-$SITE_TIME}
runner_time=${runner_time:-$time_limit}
lead=${lead:-$SITE_SIGNAL_LEAD}
model_path=${model_path:-$model}

case $mode in two-job | hetjob | single) ;; *) die "--mode must be two-job, hetjob or single, not '$mode'" ;; esac
case $single_mode in pair | managed) ;; *) die "--single-mode must be pair or managed, not '$single_mode'" ;; esac
[ -n "$model" ] || die "--model is required (the name the server serves and bfcl-ext scores)"
[ -n "$categories" ] || die "--categories is required (e.g. simple_python or non_live)"
served_name=${SERVE_SERVED_MODEL_NAME:-${BFCL_EXT_SERVED_MODEL_NAME:-$model}}
[[ $served_name =~ $ENDPOINT_VALUE_RE ]] \
    || die "the served model name '$served_name' has characters the job scripts cannot publish (allowed: letters, digits and ._:/@%+,~=-[])"
is_whole_number "$gpus" 1024 || die "--gpus (SITE_GPUS) must be a whole number from 0 to 1024, not '$gpus'"
is_whole_number "$lead" 65535 || die "--signal-lead (SITE_SIGNAL_LEAD) must be whole seconds from 0 to 65535, not '$lead'"
[ -z "$limit" ] || { is_whole_number "$limit" 999999999 && [ "$limit" -gt 0 ]; } \
    || die "--limit must be a positive whole number, not '$limit'"
for flag in --time --runner-time; do
    value=$time_limit
    [ "$flag" = --runner-time ] && value=$runner_time
    [ -z "$value" ] || is_slurm_time "$value" \
        || die "$flag must be a SLURM time limit (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS or UNLIMITED), not '$value'"
done
for setting in SITE_SERVER_CPUS SITE_RUNNER_CPUS; do
    value=${!setting:-}
    [ -z "$value" ] || { is_whole_number "$value" 100000 && [ "$value" -gt 0 ]; } \
        || die "$setting must be empty or a whole number of CPUs from 1 to 100000, not '$value'"
done
for setting in SITE_SERVER_MEM SITE_RUNNER_MEM; do
    value=${!setting:-}
    [ -z "$value" ] || is_slurm_memory "$value" || die "$setting must be empty or a sbatch --mem value such as 64G, not '$value'"
done
if [ -z "$output" ]; then
    output=${SITE_RESULTS_ROOT:-$PWD/bfcl-results}/$(printf '%s' "$model" | tr -c 'A-Za-z0-9._-' '_')
fi
case $output in /*) ;; *) output=$PWD/$output ;; esac
problem=$(path_problem "$output") || die "$problem"
output=$(realpath -m -- "$output") # the jobs get the path without links, which nobody can swap
problem=$(path_problem "$output") || die "$problem"
case $output in
    *%*) die "--output '$output' holds a %, which SLURM would expand in the job log paths (%j, %x, ...): use another folder" ;;
esac
[[ $output =~ $ENDPOINT_VALUE_RE ]] \
    || die "--output '$output' has characters the job scripts cannot publish (allowed: letters, digits and ._:/@+,~=-[])"
command -v sbatch >/dev/null || [ "$dry_run" = 1 ] || die "sbatch not found: run this on a SLURM login node"
# The folders must be the user's own and writable by nobody else (the job scripts refuse them too).
for dir in "$output" "$output/slurm"; do
    if [ -e "$dir" ] || [ -L "$dir" ]; then
        problem=$(private_dir_problem "$dir") || die "$problem"
    fi
done
# One evaluation per folder: a server job that holds it (and has not ended) is not joined by another.
if [ "$dry_run" = 0 ] && [ -f "$output/slurm/server.lock" ] && [ -O "$output/slurm/server.lock" ]; then
    holder=$(head -n 1 -- "$output/slurm/server.lock" 2>/dev/null || true)
    if [[ $holder =~ ^[0-9]+$ ]] && job_is_live "$(job_state "$holder")"; then
        die "$output is in use by server job $holder ($(job_state "$holder")): one evaluation per output folder (scancel $holder, or use another --output)"
    fi
fi

# What every job reads from its environment (sbatch --export=ALL).
export BFCL_EXT_SLURM_DIR=$SLURM_DIR BFCL_EXT_SITE_ENV=$site BFCL_EXT_OUTPUT_DIR=$output
export BFCL_EXT_MODEL=$model BFCL_EXT_TEST_CATEGORY=$categories SERVE_MODEL=$model_path
[ -n "$limit" ] && export BFCL_EXT_LIMIT=$limit
export BFCL_EXT_SINGLE_MODE=$single_mode BFCL_EXT_SIGNAL_LEAD=$lead
unset BFCL_EXT_SERVER_JOB_ID CANCEL_SERVER BFCL_EXT_SERVER_PID

common=(--parsable --output="$output/slurm/%x-%j.out")
[ -n "$account" ] && common+=(--account="$account")
[ -n "$qos" ] && common+=(--qos="$qos")
site_extra=()
[ -n "$SITE_SBATCH_EXTRA" ] && read -r -a site_extra <<<"$SITE_SBATCH_EXTRA"
gres=()
[ "$gpus" -gt 0 ] && gres=(--gres="gpu:${SITE_GPU_TYPE:+$SITE_GPU_TYPE:}$gpus")
time_opt=() runner_time_opt=()
[ -n "$time_limit" ] && time_opt=(--time="$time_limit")
[ -n "$runner_time" ] && runner_time_opt=(--time="$runner_time")
server_opts=(--job-name=bfcl-server "${time_opt[@]}" "${gres[@]}")
[ -n "$partition" ] && server_opts+=(--partition="$partition")
[ -n "$SITE_SERVER_CPUS" ] && server_opts+=(--cpus-per-task="$SITE_SERVER_CPUS")
[ -n "$SITE_SERVER_MEM" ] && server_opts+=(--mem="$SITE_SERVER_MEM")
runner_opts=(--job-name=bfcl-runner "${runner_time_opt[@]}" --signal="B:TERM@$lead")
[ -n "$runner_partition" ] && runner_opts+=(--partition="$runner_partition")
[ -n "$SITE_RUNNER_CPUS" ] && runner_opts+=(--cpus-per-task="$SITE_RUNNER_CPUS")
[ -n "$SITE_RUNNER_MEM" ] && runner_opts+=(--mem="$SITE_RUNNER_MEM")

# submit LABEL ARGS...: sbatch ARGS (or, with --dry-run, print it); the job id on stdout
# (dry run: <LABEL>).
submit() {
    local label=$1 shown
    shift
    shown=$(printf '%q ' sbatch "$@")
    if [ "$dry_run" = 1 ]; then
        printf '%s: would run: %s\n' "$PROG" "$shown" >&2
        echo "<$label>"
        return
    fi
    local out
    out=$(sbatch "$@") || { printf '%s: error: sbatch failed: %s\n' "$PROG" "$shown" >&2; exit 1; }
    printf '%s -> %s\n' "$shown" "$out" >>"$output/slurm/submissions.log"
    out=${out%%;*} # --parsable: "id" or "id;cluster"
    [[ $out =~ ^[0-9]+$ ]] || { printf '%s: error: unexpected sbatch answer: %s\n' "$PROG" "$out" >&2; exit 1; }
    echo "$out"
}

if [ "$dry_run" = 0 ]; then
    (umask 027 && mkdir -p "$output/slurm") || die "cannot create $output/slurm"
    for dir in "$output" "$output/slurm"; do
        problem=$(private_dir_problem "$dir") || die "$problem"
    done
    printf '# %s %s (%s)\n' "$(date '+%Y-%m-%dT%H:%M:%S')" "$mode" "$site" >>"$output/slurm/submissions.log"
fi
echo "model:          $model$([ "$model_path" != "$model" ] && echo " (the server loads $model_path)")"
echo "categories:     $categories${limit:+ (first $limit entries each)}"
case $mode in
    two-job)
        server_id=$(submit server "${common[@]}" --export=ALL "${server_opts[@]}" "${site_extra[@]}" "${sbatch_user[@]}" "$SLURM_DIR/server.sbatch")
        runner_env=(--export="ALL,BFCL_EXT_SERVER_JOB_ID=$server_id,CANCEL_SERVER=$cancel")
        deps=()
        [ "$dependency" = 1 ] && deps=(--dependency="after:$server_id")
        if ! runner_id=$(submit runner "${common[@]}" "${runner_env[@]}" "${runner_opts[@]}" "${deps[@]}" "${site_extra[@]}" "${sbatch_user[@]}" "$SLURM_DIR/runner.sbatch"); then
            # No runner: the server job would hold a GPU and publish an endpoint for nobody.
            printf '%s: the runner could not be submitted: cancelling the server job %s\n' "$PROG" "$server_id" >&2
            [ "$dry_run" = 1 ] || scancel "$server_id" || printf '%s: error: scancel %s failed: cancel it yourself\n' "$PROG" "$server_id" >&2
            exit 1
        fi
        echo "server job:     $server_id"
        echo "runner job:     $runner_id${deps:+ (starts once $server_id runs)}$([ "$cancel" = 1 ] && echo "; cancels $server_id when it ends")"
        echo "job logs:       $output/slurm/bfcl-server-$server_id.out, $output/slurm/bfcl-runner-$runner_id.out"
        echo "server log:     $output/slurm/server-$server_id.log"
        echo "cancel:         scancel $server_id $runner_id"
        ;;
    hetjob)
        # Component 0 (the server, and this batch script with the time-limit signal), then 1 (the runner).
        het_server=(--job-name=bfcl-het "${time_opt[@]}" --signal="B:TERM@$lead" "${gres[@]}")
        [ -n "$partition" ] && het_server+=(--partition="$partition")
        [ -n "$SITE_SERVER_CPUS" ] && het_server+=(--cpus-per-task="$SITE_SERVER_CPUS")
        [ -n "$SITE_SERVER_MEM" ] && het_server+=(--mem="$SITE_SERVER_MEM")
        het_runner=("${time_opt[@]}")
        [ -n "$runner_partition" ] && het_runner+=(--partition="$runner_partition")
        [ -n "$SITE_RUNNER_CPUS" ] && het_runner+=(--cpus-per-task="$SITE_RUNNER_CPUS")
        [ -n "$SITE_RUNNER_MEM" ] && het_runner+=(--mem="$SITE_RUNNER_MEM")
        het_id=$(submit het "${common[@]}" --export=ALL "${het_server[@]}" "${site_extra[@]}" "${sbatch_user[@]}" : "${het_runner[@]}" "${site_extra[@]}" "${sbatch_user[@]}" "$SLURM_DIR/hetjob.sbatch")
        echo "het job:        $het_id (component 0: server, component 1: runner)"
        echo "job log:        $output/slurm/bfcl-het-$het_id.out"
        echo "server log:     $output/slurm/server-$het_id.log"
        echo "cancel:         scancel $het_id"
        ;;
    single)
        single=(--job-name=bfcl-single "${time_opt[@]}" --signal="B:TERM@$lead" "${gres[@]}")
        [ -n "$partition" ] && single+=(--partition="$partition")
        cpus=$((${SITE_SERVER_CPUS:-0} + ${SITE_RUNNER_CPUS:-0}))
        [ "$cpus" -gt 0 ] && single+=(--cpus-per-task="$cpus")
        [ -n "$SITE_SERVER_MEM" ] && single+=(--mem="$SITE_SERVER_MEM")
        single_id=$(submit single "${common[@]}" --export=ALL "${single[@]}" "${site_extra[@]}" "${sbatch_user[@]}" "$SLURM_DIR/single.sbatch")
        echo "single job:     $single_id ($single_mode mode)"
        echo "job log:        $output/slurm/bfcl-single-$single_id.out"
        if [ "$single_mode" = managed ]; then
            echo "server log:     $output/logs/vllm-server.log"
        else
            echo "server log:     $output/slurm/server-$single_id.log"
        fi
        echo "cancel:         scancel $single_id"
        ;;
esac
echo "endpoint file:  $output/slurm/endpoint.env (while the server runs)"
echo "results:        $output (summary.json, score/, result/); submit again with --output $output to resume"
[ "$dry_run" = 1 ] && echo "(dry run: nothing submitted)"
exit 0
