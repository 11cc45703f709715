#!/bin/sh
# Docker for kiln's container tests: starts a dockerd unless one already answers
# (no iptables rules and no bridge: the tests' containers run without a network) and
# loads the podman test images of `.ci/podman.sh` into it, so both engines run the
# same images. Run as root, after `.ci/podman.sh`, with docker.io installed (it
# installs nothing):
#   . .ci/docker.sh      # sourced: KILN_DOCKERD_PID is set when it started dockerd
#   sh .ci/docker.sh     # prints the pid of the dockerd it started, if it did
# Idempotent: loaded images are kept (KILN_PODMAN_REBUILD=1 reloads them).

kiln_docker_setup() (
    set -eu
    command -v dockerd >/dev/null || { echo "docker.sh: dockerd is not installed (docker.io)" >&2; exit 1; }
    command -v docker >/dev/null || { echo "docker.sh: the docker client is not installed" >&2; exit 1; }
    if ! docker info >/dev/null 2>&1; then
        log=${KILN_DOCKERD_LOG:-/tmp/kiln-dockerd.log}
        nohup dockerd --iptables=false --bridge=none --pidfile /run/kiln-dockerd.pid \
            </dev/null >"$log" 2>&1 &
        echo $!
        i=0
        until docker info >/dev/null 2>&1; do
            i=$((i + 1))
            if [ $i -gt 150 ]; then
                echo "docker.sh: dockerd did not answer within 30 s; its log ($log) ends:" >&2
                tail -n 5 "$log" >&2
                exit 1
            fi
            sleep 0.2
        done
        echo "docker.sh: started dockerd (log: $log)" >&2
    fi
    for id in a b; do
        image=localhost/kiln-test-$id:1
        if [ "${KILN_PODMAN_REBUILD:-0}" != 1 ] && docker image inspect "$image" >/dev/null 2>&1; then
            continue
        fi
        podman image exists "$image" || { echo "docker.sh: $image missing in podman (run .ci/podman.sh first)" >&2; exit 1; }
        podman save --format docker-archive "$image" | docker load -q >/dev/null
        echo "docker.sh: loaded $image" >&2
    done
)

if KILN_DOCKERD_PID=$(kiln_docker_setup); then
    case "$0" in
    *docker.sh) [ -z "$KILN_DOCKERD_PID" ] || echo "$KILN_DOCKERD_PID" ;;
    esac
else
    echo "docker.sh: setup failed" >&2
    case "$0" in
    *docker.sh) exit 1 ;;
    *) return 1 ;;
    esac
fi
