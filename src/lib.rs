//! runplane: a Kubernetes operator that turns GPU nodes into an on-demand
//! GPU task service.
//!
//! - [`resources`]: the custom resources (the CRDs are generated from them).
//! - [`domain`]: pure decisions — admission, the pod, the lifecycle, credits.
//! - [`api`]: the HTTP gateway — RunKey and RunningHub wire formats over GpuTasks.
//! - [`controller`]: Kubernetes I/O — caches, writes, leader election.
//! - [`telemetry`]: logs and metrics.
#![forbid(unsafe_code)]

pub mod api;
pub mod controller;
pub mod domain;
pub mod resources;
pub mod telemetry;

#[cfg(test)]
mod fixtures;
