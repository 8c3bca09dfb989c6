#!/usr/bin/env bash
# Build a SIF from a definition of apptainer/ (runner.def, vllm.def), from the Docker image it
# wraps, taken from a registry, the local Docker engine or a `docker save` archive.
#
#   scripts/apptainer-build.sh [OPTIONS] DEF OUTPUT.sif
#
#   --source SOURCE   where the image comes from (the definition's Bootstrap):
#                       docker          a registry (default); --from is then required
#                       docker-daemon   an image of the local Docker engine
#                       docker-archive  a `docker save` tar file (the path that works everywhere:
#                                       no registry, no Docker socket inside Apptainer)
#   --from REF        docker: a registry reference (ghcr.io/ORG/bfcl-ext-runner:0.1.0);
#                     docker-daemon: IMAGE:TAG (default: the definition's, bfcl-ext-runner:local
#                     or bfcl-ext-vllm:local, the tags compose.yaml builds);
#                     docker-archive: a tar file, or IMAGE:TAG of the local engine, saved to a
#                     temporary tar first (default: as for docker-daemon)
#   --build-arg NAME=VALUE   another definition argument (repeatable). Passed for you, to a
#                     definition that uses them: SOURCE_COMMIT (git HEAD, "-dirty" when the tree
#                     has changes), BFCL_EXT_VERSION, IMAGE (--from) and IMAGE_ID (the local
#                     engine's image id, docker-daemon and docker-archive)
#   --compression C   the SIF's squashfs compression: gzip (default, or
#                     BFCL_EXT_APPTAINER_COMPRESSION from the environment; every Apptainer and
#                     Singularity mounts it), zstd, lz4 (fastest to build, larger; fine for CI)
#                     or xz. Non-gzip SIFs need a squashfuse or kernel built with that codec.
#   --notest          skip the definition's %test during the build (`apptainer test` later)
#   --runtime WHERE   host: the `apptainer` on PATH; docker: Apptainer in the tool image
#                     (scripts/ci/build-apptainer-tool.sh), on the host's network, for hosts
#                     without it; auto (default): host when `apptainer` is on PATH, else docker
#   --force           build even when OUTPUT.sif is up to date
#   --dry-run         print the apptainer build command and exit
#
# Up to date: OUTPUT.sif.stamp records what the SIF was built from (the definition, the
# source, the image id for docker-daemon and docker-archive, the arguments); a registry image
# may change under the same tag, so --source docker always builds. The SIF is written next to
# OUTPUT.sif under a temporary name, then renamed.
#
# Environment: DOCKER (default /usr/bin/docker if present), BFCL_EXT_APPTAINER_IMAGE (the tool
# image, default bfcl-ext-local/apptainer:1.4), APPTAINER (default: apptainer on PATH),
# BFCL_EXT_APPTAINER_COMPRESSION (--compression's default).
#
# Examples:
#   scripts/apptainer-build.sh --source docker-archive apptainer/runner.def runner.sif
#   scripts/apptainer-build.sh --source docker --from ghcr.io/org/bfcl-ext-vllm:0.1.0 apptainer/vllm.def vllm.sif
set -euo pipefail

BFCL_EXT_APPTAINER_IMAGE=${BFCL_EXT_APPTAINER_IMAGE:-bfcl-ext-local/apptainer:1.4}
BUILDER_UID=1000  # the tool image's non-root user
prog=apptainer-build
# The checkout this script is in (also when called through a symlinked scripts/ folder).
repo_root=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)

t_start=$SECONDS
log() { printf '%s: [%4ds] %s\n' "$prog" "$((SECONDS - t_start))" "$*" >&2; }
die() { printf '%s: error: %s\n' "$prog" "$*" >&2; exit 2; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

source_kind=docker
from=
runtime=auto
force=0
compression=${BFCL_EXT_APPTAINER_COMPRESSION:-gzip}
notest=0
dry_run=0
extra_args=()
positional=()
while [ "$#" -gt 0 ]; do
    case $1 in
        --source) [ "$#" -ge 2 ] || die "--source needs a value"; source_kind=$2; shift 2 ;;
        --source=*) source_kind=${1#*=}; shift ;;
        --from) [ "$#" -ge 2 ] || die "--from needs a value"; from=$2; shift 2 ;;
        --from=*) from=${1#*=}; shift ;;
        --build-arg) [ "$#" -ge 2 ] || die "--build-arg needs NAME=VALUE"; extra_args+=("$2"); shift 2 ;;
        --build-arg=*) extra_args+=("${1#*=}"); shift ;;
        --runtime) [ "$#" -ge 2 ] || die "--runtime needs a value"; runtime=$2; shift 2 ;;
        --runtime=*) runtime=${1#*=}; shift ;;
        --compression) [ "$#" -ge 2 ] || die "--compression needs a value"; compression=$2; shift 2 ;;
        --compression=*) compression=${1#*=}; shift ;;
        --notest) notest=1; shift ;;
        --force) force=1; shift ;;
        --dry-run) dry_run=1; shift ;;
        -h | --help) usage; exit 0 ;;
        --) shift; positional+=("$@"); break ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) positional+=("$1"); shift ;;
    esac
done
[ "${#positional[@]}" -eq 2 ] || { usage >&2; die "give a definition file and an output .sif"; }
def=${positional[0]}
output=${positional[1]}

[ -f "$def" ] || die "definition file not found: $def"
case $output in
    *.sif) ;;
    *) die "the output must end in .sif: $output" ;;
esac
for arg in "${extra_args[@]}"; do
    case $arg in
        [A-Za-z_]*=*) ;;
        *) die "--build-arg takes NAME=VALUE, not '$arg'" ;;
    esac
done
case $compression in
    gzip | zstd | lz4 | xz) ;;
    *) die "--compression must be gzip, zstd, lz4 or xz, not '$compression'" ;;
esac

# The image the definition names by default (its %arguments FROM=...).
def_from=$(sed -n 's/^[[:space:]]*FROM=\(.*\)$/\1/p' "$def" | head -n 1)
case $source_kind in
    docker)
        [ -n "$from" ] || die "--source docker needs --from REGISTRY/IMAGE:TAG (a local tag such as $def_from is not in a registry; use --source docker-daemon or docker-archive for local images)"
        ;;
    docker-daemon | docker-archive)
        from=${from:-$def_from}
        [ -n "$from" ] || die "no --from, and $def has no default FROM= in %arguments"
        ;;
    *) die "--source must be docker, docker-daemon or docker-archive, not '$source_kind'" ;;
esac

docker_bin() {
    if [ -n "${DOCKER:-}" ]; then echo "$DOCKER"
    elif [ -x /usr/bin/docker ]; then echo /usr/bin/docker
    else command -v docker || die "no docker client found"
    fi
}

case $runtime in
    auto)
        if command -v "${APPTAINER:-apptainer}" >/dev/null 2>&1; then runtime=host; else runtime=docker; fi ;;
    host)
        command -v "${APPTAINER:-apptainer}" >/dev/null 2>&1 || die "--runtime host: no ${APPTAINER:-apptainer} on PATH" ;;
    docker) ;;
    *) die "--runtime must be auto, host or docker, not '$runtime'" ;;
esac

# An archive given as a file is used as is; anything else names an image of the local engine.
archive_file=
if [ "$source_kind" = docker-archive ] && [ -f "$from" ]; then
    archive_file=$(cd "$(dirname "$from")" && pwd)/$(basename "$from")
fi
image_id=unknown
if [ "$source_kind" = docker-daemon ] || { [ "$source_kind" = docker-archive ] && [ -z "$archive_file" ]; }; then
    docker=$(docker_bin)
    image_id=$("$docker" image inspect -f '{{.Id}}' "$from" 2>/dev/null) \
        || die "image $from is not in the local Docker engine (build it, or give --from)"
fi
# What the up-to-date check compares: the image id, or the archive file's size and time.
source_id=$image_id
if [ -n "$archive_file" ]; then
    source_id="file:$(stat -c '%s:%Y' "$archive_file")"
fi

# Arguments passed for you, only to a definition that uses them.
commit=$(git -C "$repo_root" rev-parse HEAD 2>/dev/null || echo unknown)
if [ "$commit" != unknown ] && [ -n "$(git -C "$repo_root" status --porcelain 2>/dev/null)" ]; then
    commit="$commit-dirty"
fi
bfcl_ext_version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$repo_root/bfcl_ext/__init__.py")
build_args=()
add_arg() {
    local name=${1%%=*} given
    grep -Eq "\{\{[[:space:]]*${name}[[:space:]]*\}\}" "$def" || return 0
    for given in "${extra_args[@]}"; do
        [ "${given%%=*}" = "$name" ] && return 0
    done
    build_args+=(--build-arg "$1")
}
add_arg "SOURCE_COMMIT=$commit"
add_arg "BFCL_EXT_VERSION=${bfcl_ext_version:-unknown}"
add_arg "IMAGE=$from"
add_arg "IMAGE_ID=$image_id"
for arg in "${extra_args[@]}"; do build_args+=(--build-arg "$arg"); done
options=(--force)
if [ "$compression" != gzip ]; then options+=(--mksquashfs-args "-comp $compression"); fi
if [ "$notest" = 1 ]; then options+=(--notest); fi

# Up to date? (Not for a registry: the tag may point elsewhere now.)
stamp_file=$output.stamp
stamp=$({
    sha256sum <"$def"
    printf '%s\n' "$source_kind" "$from" "$source_id" "${build_args[@]}" "${options[@]}"
} | sha256sum | cut -d' ' -f1)
if [ "$dry_run" = 0 ] && [ "$force" = 0 ] && [ "$source_kind" != docker ] && [ -f "$output" ] \
    && [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ]; then
    log "$output is up to date ($(du -h "$output" | cut -f1)); nothing to do (--force rebuilds)"
    echo "$output"
    exit 0
fi

# The build folder: next to the output (same file system: the final rename is atomic; room
# for the unpacked image); /work inside the tool image.
def_name=$(basename "$def")
if [ "$dry_run" = 1 ]; then
    work=WORK
else
    mkdir -p "$(dirname "$output")"
    work=$(mktemp -d "$(cd "$(dirname "$output")" && pwd)/.apptainer-build.XXXXXX")
fi
if [ "$runtime" = host ]; then inner=$work; else inner=/work; fi
case $source_kind in
    docker-archive)
        if [ -z "$archive_file" ]; then src=$inner/image.tar
        elif [ "$runtime" = host ]; then src=$archive_file
        else src=/work/in/image.tar
        fi
        ;;
    *) src=$from ;;
esac
build=(apptainer build "${options[@]}" --build-arg "BOOTSTRAP=$source_kind" --build-arg "FROM=$src"
       "${build_args[@]}" "$inner/image.sif" "$inner/$def_name")
if [ "$runtime" = host ]; then
    build[0]=${APPTAINER:-apptainer}
fi
if [ "$dry_run" = 1 ]; then
    [ "$runtime" = host ] || printf '# in %s, as uid %s, with /work = a build folder next to %s\n' \
        "$BFCL_EXT_APPTAINER_IMAGE" "$BUILDER_UID" "$output"
    printf '%q ' "${build[@]}"
    printf '\n'
    exit 0
fi

container=
cleanup() {
    if [ -n "$container" ]; then "$(docker_bin)" rm -f "$container" >/dev/null 2>&1 || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "building $output from $def ($source_kind:$from, runtime $runtime, $compression)"
cp "$def" "$work/$def_name"
if [ "$source_kind" = docker-archive ] && [ -z "$archive_file" ]; then
    t=$SECONDS
    "$docker" save -o "$work/image.tar" "$from"
    chmod 0644 "$work/image.tar"
    log "docker save $from: $(du -h "$work/image.tar" | cut -f1) in $((SECONDS - t)) s"
fi

t=$SECONDS
if [ "$runtime" = host ]; then
    mkdir -p "$work/tmp"
    APPTAINER_TMPDIR=$work/tmp "${build[@]}"
else
    docker=$(docker_bin)
    "$docker" image inspect "$BFCL_EXT_APPTAINER_IMAGE" >/dev/null 2>&1 \
        || die "the Apptainer tool image $BFCL_EXT_APPTAINER_IMAGE is missing: run scripts/ci/build-apptainer-tool.sh"
    # The tool image builds as its non-root user (uid 1000): the build folder must be its.
    if [ "$(id -u)" = 0 ]; then
        chown "$BUILDER_UID:$BUILDER_UID" "$work"
    elif [ "$(id -u)" != "$BUILDER_UID" ]; then
        chmod 0777 "$work"
    fi
    container=apptainer-build-$$-$RANDOM
    # The host's network, as a host Apptainer has: a registry only the host reaches (a site
    # mirror, one on localhost) works the same.
    run=(run --rm --name "$container" --network host --cap-add SYS_ADMIN --security-opt seccomp=unconfined
         --security-opt apparmor=unconfined --security-opt systempaths=unconfined
         --user "$BUILDER_UID:$BUILDER_UID" --volume "$work:/work"
         --env APPTAINER_TMPDIR=/work/tmp --env APPTAINER_CACHEDIR=/work/cache)
    if [ -n "$archive_file" ]; then
        if [ "$(stat -c %u "$archive_file")" = "$BUILDER_UID" ] || [ -n "$(find "$archive_file" -maxdepth 0 -perm -o=r)" ]; then
            run+=(--volume "$archive_file:/work/in/image.tar:ro")
        else
            # `docker save -o` writes mode 0600: the builder could not read the file itself.
            log "$from is not readable by uid $BUILDER_UID (docker save -o writes mode 0600): copying it into the build folder"
            mkdir -p "$work/in"
            cp "$archive_file" "$work/in/image.tar"
            chmod 0644 "$work/in/image.tar"
        fi
    fi
    if [ "$source_kind" = docker-daemon ]; then
        # Apptainer reads the image from the engine through its socket.
        socket=${DOCKER_HOST:-unix:///var/run/docker.sock}
        socket=${socket#unix://}
        [ -S "$socket" ] || die "docker-daemon needs the engine's socket; $socket is not one (DOCKER_HOST=${DOCKER_HOST:-})"
        run+=(--volume "$socket:/var/run/docker.sock" --group-add "$(stat -c %g "$socket")")
    fi
    "$docker" "${run[@]}" "$BFCL_EXT_APPTAINER_IMAGE" sh -euc \
        'mkdir -p /work/tmp /work/cache; exec "$@"' apptainer-build "${build[@]}"
    container=
fi
mv -f "$work/image.sif" "$output"
printf '%s\n' "$stamp" >"$stamp_file"
log "built $output: $(du -h "$output" | cut -f1) in $((SECONDS - t)) s ($((SECONDS - t_start)) s in all)"
echo "$output"
