#!/usr/bin/env bash
# Build the eegfmri image from the Dockerfile (`make image`).
#
# Engine: docker where a Docker daemon answers, else podman (or buildah) with chroot
# isolation, which needs no daemon. Base: the Dockerfile's default (the fMRIPrep image)
# when it is present or can be pulled; otherwise a Debian bookworm base made offline with
# mmdebstrap and imported into podman (the output says so: that image has no fMRIPrep, so
# --fmri-backend fmriprep does not work in it). torch: the PyTorch CPU index when it is
# reachable, else the torch wheel of TORCH_WHEELHOUSE (mounted read-only into the build).
#
# Environment (all optional):
#   IMAGE             tag to build (default eegfmri/eegfmri:<version>)
#   BASE_IMAGE        base image; set it to skip the default-base probe
#   BASE_PYTHON       Python >= 3.11 of BASE_IMAGE (needed with a non-default BASE_IMAGE)
#   TORCH_VARIANT     cpu (default) or a CUDA tag of the PyTorch index, e.g. cu128
#   TORCH_WHEELHOUSE  folder holding torch-<version>+<variant>-*.whl (default: $PIP_FIND_LINKS)
#   BUILD_CA_BUNDLE   CA bundle pip trusts in the build (default: $PIP_CERT, $REQUESTS_CA_BUNDLE)
#   IMAGE_CACHE       folder for the mmdebstrap root file system (default ~/.cache/eegfmri-image)
set -euo pipefail

cd "$(dirname "$0")/.."
say() { printf 'make image: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

arg_default() { sed -n "s/^ARG $1=\\(.*\\)$/\\1/p" Dockerfile | head -n 1 | tr -d '"'; }
VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' bids_app/__init__.py)
[ -n "$VERSION" ] || die "cannot read __version__ from bids_app/__init__.py"
IMAGE=${IMAGE:-eegfmri/eegfmri:$VERSION}
DEFAULT_BASE=$(arg_default BASE_IMAGE)
TORCH_VERSION=$(arg_default TORCH_VERSION)
TORCH_VARIANT=${TORCH_VARIANT:-$(arg_default TORCH_VARIANT)}
OFFLINE_BASE=localhost/eegfmri-base:bookworm
OFFLINE_PYTHON=/usr/bin/python3.11
IMAGE_CACHE=${IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/eegfmri-image}

# ---------------------------------------------------------------------------- engine
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    ENGINE=docker
elif command -v podman >/dev/null 2>&1; then
    ENGINE=podman
elif command -v buildah >/dev/null 2>&1; then
    ENGINE=buildah
else
    die "no Docker daemon and neither podman nor buildah is installed; install one " \
        "(Debian: apt-get install podman mmdebstrap)."
fi
say "engine: $ENGINE$([ "$ENGINE" = docker ] || echo ' (no Docker daemon; chroot isolation)')"

has_image() {
    case $ENGINE in
        docker) docker image inspect "$1" >/dev/null 2>&1 ;;
        podman) podman image exists "$1" ;;
        buildah) buildah inspect --type image "$1" >/dev/null 2>&1 ;;
    esac
}

# ---------------------------------------------------------------------------- base
make_offline_base() {
    has_image "$OFFLINE_BASE" && { say "offline base $OFFLINE_BASE already present"; return; }
    [ "$ENGINE" != docker ] || die "the offline base needs podman or buildah."
    command -v mmdebstrap >/dev/null 2>&1 \
        || die "mmdebstrap is not installed (Debian: apt-get install mmdebstrap)."
    mkdir -p "$IMAGE_CACHE"
    # mmdebstrap picks the output format from the extension: keep ".tar" last.
    local rootfs="$IMAGE_CACHE/bookworm-python3.tar"
    say "making $OFFLINE_BASE with mmdebstrap (Debian bookworm minbase + python3, venv)"
    mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs"
    "$ENGINE" import "$rootfs" "$OFFLINE_BASE" >/dev/null
    rm -f "$rootfs"
}

BUILD_ARGS=()
if [ -n "${BASE_IMAGE:-}" ]; then
    [ -n "${BASE_PYTHON:-}" ] || [ "$BASE_IMAGE" = "$DEFAULT_BASE" ] \
        || die "BASE_IMAGE=$BASE_IMAGE needs BASE_PYTHON (its Python >= 3.11)."
    say "base: $BASE_IMAGE (given)"
elif has_image "$DEFAULT_BASE" || timeout 300 "$ENGINE" pull "$DEFAULT_BASE" >/dev/null 2>&1; then
    BASE_IMAGE=$DEFAULT_BASE
    say "base: $BASE_IMAGE (the default, with fMRIPrep)"
else
    say "base: the default base $DEFAULT_BASE cannot be pulled here; falling back to an" \
        "offline Debian bookworm base made with mmdebstrap. This image has no fMRIPrep:" \
        "--fmri-backend fmriprep will not work in it."
    make_offline_base
    BASE_IMAGE=$OFFLINE_BASE
    BASE_PYTHON=$OFFLINE_PYTHON
fi
BUILD_ARGS+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
[ -z "${BASE_PYTHON:-}" ] || BUILD_ARGS+=(--build-arg "BASE_PYTHON=$BASE_PYTHON")

# ---------------------------------------------------------------------------- torch
TORCH_INDEX=$(arg_default TORCH_INDEX_URL)
TORCH_INDEX=${TORCH_INDEX//\$\{TORCH_VARIANT\}/$TORCH_VARIANT}
BUILD_ARGS+=(--build-arg "TORCH_VARIANT=$TORCH_VARIANT")
VOLUMES=()
if curl -fsS -m 20 -o /dev/null "$TORCH_INDEX/torch/" 2>/dev/null; then
    say "torch: $TORCH_VERSION+$TORCH_VARIANT from $TORCH_INDEX"
else
    wheelhouse=${TORCH_WHEELHOUSE:-${PIP_FIND_LINKS:-}}
    wheel=$(find "${wheelhouse:-/nonexistent}" -maxdepth 1 \
        -name "torch-$TORCH_VERSION+$TORCH_VARIANT-*.whl" 2>/dev/null | head -n 1)
    [ -n "$wheel" ] || die "$TORCH_INDEX cannot be reached and no" \
        "torch-$TORCH_VERSION+$TORCH_VARIANT wheel is in TORCH_WHEELHOUSE='$wheelhouse';" \
        "download it where the index is reachable and set TORCH_WHEELHOUSE to its folder."
    [ "$ENGINE" != docker ] || die "a local torch wheelhouse needs podman or buildah" \
        "(docker build cannot mount it)."
    say "torch: $TORCH_INDEX cannot be reached; installing $(basename "$wheel") from" \
        "$wheelhouse (mounted read-only), its dependencies from PyPI"
    VOLUMES+=(--volume "$wheelhouse:/tmp/wheelhouse:ro")
    BUILD_ARGS+=(--build-arg "TORCH_FIND_LINKS=/tmp/wheelhouse"
                 --build-arg "TORCH_INDEX_URL=https://pypi.org/simple")
fi

# ---------------------------------------------------------------------------- CA bundle
# pip inside the build trusts the same CA bundle as pip here (e.g. a proxy's CA).
ca_bundle=${BUILD_CA_BUNDLE:-${PIP_CERT:-${REQUESTS_CA_BUNDLE:-}}}
if [ -n "$ca_bundle" ] && [ "$ENGINE" != docker ]; then
    [ -f "$ca_bundle" ] || die "CA bundle $ca_bundle (BUILD_CA_BUNDLE/PIP_CERT) does not exist."
    say "pip trusts $ca_bundle during the build (mounted read-only, not kept in the image)"
    VOLUMES+=(--volume "$ca_bundle:/tmp/build-ca.crt:ro")
    BUILD_ARGS+=(--build-arg "BUILD_CA_BUNDLE=/tmp/build-ca.crt")
fi

# ---------------------------------------------------------------------------- build
BUILD_ARGS+=(--build-arg "VERSION=$VERSION"
             --build-arg "BUILD_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
             --build-arg "VCS_REF=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)")
# podman/buildah write the Docker image format: OCI has no SHELL, and Docker-format images
# load the same way into docker, podman and apptainer (docker-archive).
case $ENGINE in
    docker) BUILD=(docker build) ;;
    podman) BUILD=(podman build --format docker --isolation chroot --pull=missing) ;;
    buildah) BUILD=(buildah bud --format docker --isolation chroot --pull) ;;
esac
start=$(date +%s)
"${BUILD[@]}" "${BUILD_ARGS[@]}" "${VOLUMES[@]}" --tag "$IMAGE" --file Dockerfile .
seconds=$(( $(date +%s) - start ))
case $ENGINE in
    buildah) size=$(buildah inspect --type image --format '{{.ImageSize}}' "$IMAGE" 2>/dev/null \
                    || echo unknown) ;;
    *) size=$("$ENGINE" image inspect --format '{{.Size}}' "$IMAGE") ;;
esac
say "built $IMAGE on $BASE_IMAGE in ${seconds} s; image size $((size / 1000000)) MB" \
    "(uncompressed, base included)"
