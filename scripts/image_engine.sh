# Sourced by image_test.sh and image_sif.sh (after they define `die` and cd to the repo):
# sets VERSION and IMAGE, picks ENGINE (a running Docker daemon, else podman) and checks
# that the image has been built.
VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' bids_app/__init__.py)
IMAGE=${IMAGE:-eegfmri/eegfmri:$VERSION}

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    ENGINE=docker
elif command -v podman >/dev/null 2>&1; then
    ENGINE=podman
else
    die "neither a Docker daemon nor podman is available."
fi
"$ENGINE" image inspect "$IMAGE" >/dev/null 2>&1 || die "image $IMAGE not found; run make image."
