//! The container stage against real podman (with runc) and real docker (dockerd):
//! matrix, hardening, lifecycle, artifacts and secrets, each test once per engine.
//! Needs the local test images from `.ci/podman.sh` and `.ci/docker.sh`.
mod support;

mod build;
mod hardening;
mod lifecycle;
mod matrix;
mod outputs;
mod services;
