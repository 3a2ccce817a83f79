//! Decisions, as pure functions of observed state and `now`.
//!
//! - [`admission`]: which queued tasks start, and why the others wait.
//! - [`pod`]: the pod a task runs as.
//! - [`lifecycle`]: what a task's pod says about the task, and what to do next.
//! - [`credits`]: what a finished task costs.
//! - [`template`]: whether a template can run tasks (its status).
//!
//! Nothing here performs I/O or reads a clock; the controller feeds it
//! snapshots of its caches and applies what it returns.

pub mod admission;
pub mod credits;
pub mod input;
pub mod lifecycle;
pub mod pod;
pub mod template;
pub mod webhook;

/// A task's identity: namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskKey {
    pub namespace: String,
    pub name: String,
}

impl TaskKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), name: name.into() }
    }
}

impl std::fmt::Display for TaskKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The token a task's workload presents to the progress callback: an
/// HMAC-SHA256 of the task's UID under a key the controller and the gateway
/// share, so the gateway can check it without storing anything.
pub fn progress_token(key: &[u8], task_uid: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(b"runplane-progress:");
    mac.update(task_uid.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}
