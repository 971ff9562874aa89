#!/usr/bin/env bash
# Convert the built eegfmri image to a Singularity/Apptainer SIF (`make image-sif`).
#
# The image is saved as a docker-archive (no registry, no Docker daemon needed), then
# `apptainer build` (or `singularity build`) converts that archive. Where neither is
# installed, the archive is kept and the exact command to run elsewhere is printed.
#
# Environment: IMAGE (default eegfmri/eegfmri:<version>), SIF_DIR (default build/).
set -euo pipefail

cd "$(dirname "$0")/.."
say() { printf 'make image-sif: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# shellcheck source=image_engine.sh
source scripts/image_engine.sh
SIF_DIR=$(realpath -m "${SIF_DIR:-build}")
ARCHIVE="$SIF_DIR/eegfmri-$VERSION.docker.tar"
SIF="$SIF_DIR/eegfmri-$VERSION.sif"

mkdir -p "$SIF_DIR"
rm -f "$ARCHIVE"
if [ "$ENGINE" = podman ]; then
    podman save --format docker-archive --output "$ARCHIVE" "$IMAGE"
else
    docker save --output "$ARCHIVE" "$IMAGE"
fi
say "saved $IMAGE to $ARCHIVE ($(( $(stat -c %s "$ARCHIVE") / 1000000 )) MB)"

BUILDER=$(command -v apptainer || command -v singularity || true)
if [ -z "$BUILDER" ]; then
    say "neither apptainer nor singularity is installed here; on a machine that has" \
        "one, run: apptainer build $(basename "$SIF") docker-archive://$(basename "$ARCHIVE")"
    exit 0
fi
"$BUILDER" build --force "$SIF" "docker-archive://$ARCHIVE"
"$BUILDER" test "$SIF"
rm -f "$ARCHIVE"
say "built $SIF ($(( $(stat -c %s "$SIF") / 1000000 )) MB)"
