//! The container stage against real podman (with runc): matrix, hardening, lifecycle,
//! artifacts and secrets. Needs the local test images from `.ci/podman.sh`.
mod support;

mod hardening;
mod lifecycle;
mod matrix;
mod outputs;
