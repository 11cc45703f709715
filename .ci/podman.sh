#!/bin/sh
# Podman for kiln's container tests: writes a containers.conf that works on this CI
# (runc, cgroupfs: crun fails on cgroup v1 hybrid hosts), exports CONTAINERS_CONF,
# and builds the local test images (no registry is reachable):
#   localhost/kiln-test-a:1   busybox, /etc/os-release ID=kiln-a
#   localhost/kiln-test-b:1   busybox, /etc/os-release ID=kiln-b
#
# Run as root, after podman, runc and busybox-static are installed (it installs nothing):
#   . .ci/podman.sh [CONF_PATH]      # sourced: CONTAINERS_CONF stays exported
#   sh .ci/podman.sh [CONF_PATH]     # run: prints the export line to eval
# CONF_PATH defaults to $KILN_PODMAN_CONF, then /etc/containers/kiln-ci.conf.
# Idempotent: images that exist are kept (KILN_PODMAN_REBUILD=1 rebuilds them).

kiln_podman_conf=${1:-${KILN_PODMAN_CONF:-/etc/containers/kiln-ci.conf}}

kiln_podman_setup() (
    set -eu
    conf=$1
    mkdir -p "$(dirname "$conf")"
    cat >"$conf" <<'CONF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
    export CONTAINERS_CONF="$conf"
    command -v podman >/dev/null || { echo "podman.sh: podman is not installed" >&2; exit 1; }
    busybox=/bin/busybox
    [ -x "$busybox" ] || { echo "podman.sh: $busybox missing (install busybox-static)" >&2; exit 1; }
    for id in a b; do
        image=localhost/kiln-test-$id:1
        if [ "${KILN_PODMAN_REBUILD:-0}" != 1 ] && podman image exists "$image"; then
            continue
        fi
        root=$(mktemp -d)
        chmod 755 "$root"
        trap 'rm -rf "$root"' EXIT
        mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/workspace" "$root/artifacts" \
            "$root/proc" "$root/sys" "$root/dev" "$root/run" "$root/var/tmp"
        chmod 1777 "$root/tmp" "$root/var/tmp"
        cp "$busybox" "$root/bin/busybox"
        for applet in $("$busybox" --list); do
            [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
        done
        printf 'ID=kiln-%s\nNAME="kiln test image %s"\nVERSION_ID=1\n' "$id" "$id" \
            >"$root/etc/os-release"
        printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n' \
            >"$root/etc/passwd"
        printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
        tar -C "$root" --numeric-owner --owner=0 --group=0 -cf "$root.tar" .
        podman import -q --change 'CMD ["/bin/sh"]' --change 'ENV PATH=/bin' \
            "$root.tar" "$image" >/dev/null
        rm -rf "$root" "$root.tar"
        trap - EXIT
        echo "podman.sh: built $image" >&2
    done
)

if kiln_podman_setup "$kiln_podman_conf"; then
    export CONTAINERS_CONF="$kiln_podman_conf"
    case "$0" in
    *podman.sh) echo "export CONTAINERS_CONF=$kiln_podman_conf" ;;
    esac
else
    echo "podman.sh: setup failed" >&2
    case "$0" in
    *podman.sh) exit 1 ;;
    *) return 1 ;;
    esac
fi
