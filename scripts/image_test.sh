#!/usr/bin/env bash
# Run the built eegfmri image as its non-root user and check it (`make image-test`).
#
#   1. eegfmri --version and eegfmri --help
#   2. eegfmri demo /out                        (simulate, convert, both levels)
#   3. the BIDS validator inside the image on /out/bids and /out/derivatives: 0 errors
#   4. a BIDS-App run on a read-only input:     eegfmri /in /out/app participant, where
#      /in is a tiny simulated dataset mounted read-only whose checksum must not change
#
# The image file system is read-only in every step; only /out (a host folder), /tmp and
# $HOME (both tmpfs) are writable. `podman run` (or `docker run`) is used where it works;
# where it does not (e.g. crun cannot set RLIMIT_NOFILE in this sandbox) the script says
# so and falls back to `podman mount` + a private mount namespace + chroot as the image's
# user. The fallback needs root, or a user namespace: `podman unshare make image-test`.
#
# Environment: IMAGE (default eegfmri/eegfmri:<version>), IMAGE_TEST_OUT (host folder for
# /out, default build/image-test; a previous run's outputs there are replaced).
set -euo pipefail

SCRIPT=$(realpath "$0")
cd "$(dirname "$SCRIPT")/.."
say() { printf 'make image-test: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# shellcheck source=image_engine.sh
source scripts/image_engine.sh
OUT=$(realpath -m "${IMAGE_TEST_OUT:-build/image-test}")

config() { "$ENGINE" image inspect --format "$1" "$IMAGE"; }
mapfile -t ENTRYPOINT < <(config '{{range .Config.Entrypoint}}{{println .}}{{end}}' | sed '/^$/d')
mapfile -t ENV_VARS < <(config '{{range .Config.Env}}{{println .}}{{end}}' | sed '/^$/d')
USER_SPEC=$(config '{{.Config.User}}')
WORKDIR=$(config '{{.Config.WorkingDir}}')
HOME_DIR=$(printf '%s\n' "${ENV_VARS[@]}" | sed -n 's/^HOME=//p')
[ "${#ENTRYPOINT[@]}" -gt 0 ] || die "$IMAGE has no ENTRYPOINT."
case ${USER_SPEC%%:*} in
    "" | 0 | root) die "$IMAGE runs as root (USER '${USER_SPEC}'); it must not." ;;
esac
PYTHON_IN_IMAGE="$(dirname "${ENTRYPOINT[0]}")/python"

# A previous run's folder (marked) is replaced; any other non-empty folder is refused.
if [ -n "$(ls -A "$OUT" 2>/dev/null)" ]; then
    [ -e "$OUT/.eegfmri-image-test" ] || die "$OUT is not empty; choose another IMAGE_TEST_OUT."
    rm -rf "$OUT"
fi
mkdir -p "$OUT"
touch "$OUT/.eegfmri-image-test"

# ----------------------------------------------------------------- how to run the image
MODE=run
if ! probe=$("$ENGINE" run --rm --entrypoint /bin/true "$IMAGE" 2>&1); then
    [ "$ENGINE" = podman ] || die "docker run failed: ${probe##*$'\n'}"
    MODE=chroot
    say "podman run does not work here (${probe##*$'\n'});" \
        "falling back to podman mount + chroot as the image's user ${USER_SPEC}"
    if [ "$(id -u)" != 0 ]; then
        [ -z "${_EEGFMRI_UNSHARED:-}" ] || die "the chroot fallback needs root privileges."
        say "not root: re-running inside podman unshare"
        _EEGFMRI_UNSHARED=1 exec podman unshare bash "$SCRIPT" "$@"
    fi
    CONTAINER=$(podman create --entrypoint /bin/true "$IMAGE")
    cleanup() { podman umount "$CONTAINER" >/dev/null 2>&1 || true
                podman rm "$CONTAINER" >/dev/null 2>&1 || true; }
    trap cleanup EXIT
    ROOT=$(podman mount "$CONTAINER")
    mkdir -p "$ROOT/out" "$ROOT/in"  # mount points, in the container's own layer
    uid=${USER_SPEC%%:*}
    if [[ $USER_SPEC == *:* ]]; then gid=${USER_SPEC#*:}; else
        gid=$(awk -F: -v u="$uid" '$3 == u || $1 == u {print $4; exit}' "$ROOT/etc/passwd")
        uid=$(awk -F: -v u="$uid" '$3 == u || $1 == u {print $3; exit}' "$ROOT/etc/passwd")
    fi
    [ -n "$uid" ] && [ -n "$gid" ] || die "user ${USER_SPEC} is not in the image's /etc/passwd."
    USER_SPEC="$uid:$gid"
fi
chown "${USER_SPEC%%:*}" "$OUT" 2>/dev/null || chmod 0777 "$OUT"

# Mount namespace of the chroot fallback: the image read-only, /out read-write, /in
# read-only, fresh /proc, /tmp, $HOME, /dev/shm and a minimal /dev.
inside_namespace() {
    set -euo pipefail
    local root=$1 out=$2 in=$3 userspec=$4 workdir=$5 home=$6; shift 6
    mount --bind "$root" "$root"
    mount -o remount,bind,ro "$root"
    mount -t proc proc "$root/proc"
    mount -t tmpfs -o mode=0755 tmpfs "$root/dev"
    for node in null zero full random urandom tty; do
        touch "$root/dev/$node" && mount --bind "/dev/$node" "$root/dev/$node"
    done
    mkdir "$root/dev/shm" && mount -t tmpfs -o mode=1777 tmpfs "$root/dev/shm"
    ln -s /proc/self/fd "$root/dev/fd"
    mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
    mount -t tmpfs -o mode=1777 tmpfs "$root$home"
    mount --bind "$out" "$root/out"
    if [ -n "$in" ]; then
        mount --bind "$in" "$root/in" && mount -o remount,bind,ro "$root/in"
    fi
    exec chroot --userspec="$userspec" --groups="${userspec#*:}" "$root" \
        /usr/bin/env -i "${ENV_VARS[@]}" /bin/sh -c 'cd "$0" && exec "$@"' "$workdir" "$@"
}

# in_image INPUT_DIR PROGRAM ARGS...: run PROGRAM in the image; INPUT_DIR ('' for none)
# is mounted read-only at /in.
in_image() {
    local input=$1; shift
    if [ "$MODE" = run ]; then
        local mounts=(--volume "$OUT:/out")
        [ -z "$input" ] || mounts+=(--volume "$input:/in:ro")
        "$ENGINE" run --rm --read-only --tmpfs /tmp --tmpfs "$HOME_DIR:mode=1777" \
            --user "$USER_SPEC" "${mounts[@]}" --entrypoint "$1" "$IMAGE" "${@:2}"
    else
        unshare --mount --propagation private -- bash -c \
            "$(declare -p ENV_VARS); $(declare -f inside_namespace); inside_namespace \"\$@\"" \
            _ "$ROOT" "$OUT" "$input" "$USER_SPEC" "${WORKDIR:-/}" "$HOME_DIR" "$@"
    fi
}

tree_checksum() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum); }

# ----------------------------------------------------------------- the checks
say "[1/4] user, --version and --help in $IMAGE ($MODE)"
uid_inside=$(in_image "" /usr/bin/id -u)
[ "$uid_inside" != 0 ] || die "the image ran as root."
version=$(in_image "" "${ENTRYPOINT[@]}" --version)
[[ $version == *"$VERSION"* ]] || die "eegfmri --version printed '$version', not $VERSION."
in_image "" "${ENTRYPOINT[@]}" --help | grep -q -- "--participant-label" \
    || die "eegfmri --help does not describe the BIDS-App arguments."
say "uid $uid_inside; $version"

say "[2/4] eegfmri demo /out"
start=$(date +%s)
in_image "" "${ENTRYPOINT[@]}" demo /out
demo_seconds=$(( $(date +%s) - start ))

VALIDATE='import sys
from bids_app.io.validate import run_validator
errors = 0
for path in sys.argv[1:]:
    result = run_validator(path)
    print(f"{path}: {len(result.errors)} validator error(s), {len(result.warnings)} warning(s)")
    for line in result.summary("error"):
        print("  " + line)
    errors += len(result.errors)
sys.exit(1 if errors else 0)'
say "[3/4] BIDS validator inside the image"
in_image "" "$PYTHON_IN_IMAGE" -c "$VALIDATE" /out/bids /out/derivatives \
    || die "the demo outputs have validator errors (above)."

say "[4/4] BIDS-App run on a read-only input"
in_image "" "${ENTRYPOINT[@]}" simulate /out/tiny-bids --scale tiny >/dev/null
input="$OUT/tiny-bids"
before=$(tree_checksum "$input")
in_image "$input" "${ENTRYPOINT[@]}" /in /out/app participant
in_image "" "$PYTHON_IN_IMAGE" -c "$VALIDATE" /out/app \
    || die "the BIDS-App outputs have validator errors (above)."
[ "$(tree_checksum "$input")" = "$before" ] || die "the read-only input changed."
owners=$(find "$OUT" -mindepth 1 ! -name .eegfmri-image-test ! -uid "${USER_SPEC%%:*}" -printf '%u %p\n' | head -n 3)
[ -z "$owners" ] || die "files in $OUT not written by the image's user: $owners"

say "passed ($MODE as uid $uid_inside): --version, --help, demo in ${demo_seconds} s with" \
    "0 validator errors, read-only input unchanged; outputs in $OUT"
