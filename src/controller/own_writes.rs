//! Task statuses this process wrote that its cache has not shown yet.
//!
//! A status write returns the task as it now is, but the watch brings that
//! version to the cache a moment later: milliseconds on an idle apiserver,
//! seconds on a loaded one. A reconcile in between (woken by the task's pod
//! starting or ending) would decide from the version the write replaced, and
//! its own write, which carries that version, would fail with a conflict: a
//! wasted write, a retry a second later, and a task that reads Running a
//! second longer. So every status write is recorded here, and a task read
//! from the cache at a version this process has since replaced is read as
//! its latest write left it. Any other version is newer than what this
//! process knows, and the cache's is used.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kube::ResourceExt;

use crate::resources::GpuTask;

/// An entry the cache never caught up with (its task deleted, or changed
/// by someone else since) is dropped after this long.
const KEEP: Duration = Duration::from_secs(120);
/// Versions remembered as replaced, per task: enough for the writes that
/// can follow each other before the watch shows the first.
const REPLACED: usize = 8;

#[derive(Default)]
pub struct OwnWrites {
    tasks: Mutex<HashMap<String, Entry>>,
    /// When entries were last pruned by age.
    pruned: Mutex<Option<Instant>>,
}

struct Entry {
    /// Versions this process's writes replaced, oldest first.
    replaced: Vec<String>,
    /// The task as the latest write left it.
    latest: Arc<GpuTask>,
    at: Instant,
}

impl OwnWrites {
    /// Records that `before` was replaced by `after`, both of one task.
    pub fn record(&self, before: &GpuTask, after: GpuTask) {
        let (Some(uid), Some(replaced)) = (after.metadata.uid.clone(), before.resource_version()) else { return };
        let now = Instant::now();
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        self.prune(&mut tasks, now);
        let mut versions = match tasks.remove(&uid) {
            // A chain of this process's writes: each replaced the one before.
            Some(entry) if entry.latest.resource_version().as_ref() == Some(&replaced) => entry.replaced,
            _ => Vec::new(),
        };
        versions.push(replaced);
        let overflow = versions.len().saturating_sub(REPLACED);
        versions.drain(..overflow);
        tasks.insert(uid, Entry { replaced: versions, latest: Arc::new(after), at: now });
    }

    /// The newest version of `cached` this process knows of.
    pub fn fresher(&self, cached: Arc<GpuTask>) -> Arc<GpuTask> {
        let Some(uid) = cached.metadata.uid.as_deref() else { return cached };
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = tasks.get(uid) else { return cached };
        let version = cached.resource_version();
        if version.as_ref().is_some_and(|v| entry.replaced.contains(v)) {
            return entry.latest.clone();
        }
        if version == entry.latest.resource_version() {
            // The cache has caught up.
            tasks.remove(uid);
        }
        // Otherwise a version someone else wrote, newer than this process's.
        cached
    }

    fn prune(&self, tasks: &mut HashMap<String, Entry>, now: Instant) {
        let mut pruned = self.pruned.lock().unwrap_or_else(PoisonError::into_inner);
        if pruned.is_some_and(|at| now.duration_since(at) < KEEP) {
            return;
        }
        *pruned = Some(now);
        tasks.retain(|_, entry| now.duration_since(entry.at) < KEEP);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.tasks.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{GpuTaskSpec, GpuTaskStatus, TaskPhase};

    fn task(version: &str, phase: Option<TaskPhase>) -> GpuTask {
        let spec: GpuTaskSpec = serde_json::from_value(serde_json::json!({ "templateRef": { "name": "t" } })).unwrap();
        let mut task = GpuTask::new("a", spec);
        task.metadata.uid = Some("uid-a".into());
        task.metadata.resource_version = Some(version.into());
        task.status = phase.map(|phase| GpuTaskStatus { phase: Some(phase), ..GpuTaskStatus::default() });
        task
    }

    fn phase(task: &GpuTask) -> Option<TaskPhase> {
        task.status.as_ref().and_then(|s| s.phase)
    }

    #[test]
    fn a_version_this_process_replaced_reads_as_its_write() {
        let writes = OwnWrites::default();
        let queued = task("1", Some(TaskPhase::Queued));
        writes.record(&queued, task("2", Some(TaskPhase::Running)));
        writes.record(&task("2", Some(TaskPhase::Running)), task("3", Some(TaskPhase::Completed)));

        // The cache still shows either replaced version: read the latest write.
        for cached in ["1", "2"] {
            let read = writes.fresher(Arc::new(task(cached, Some(TaskPhase::Queued))));
            assert_eq!((read.resource_version().as_deref(), phase(&read)), (Some("3"), Some(TaskPhase::Completed)));
        }
        // Caught up: the cache is read, and nothing more is kept.
        let read = writes.fresher(Arc::new(task("3", Some(TaskPhase::Completed))));
        assert_eq!(read.resource_version().as_deref(), Some("3"));
        assert_eq!(writes.len(), 0);
        let read = writes.fresher(Arc::new(task("1", Some(TaskPhase::Queued))));
        assert_eq!(read.resource_version().as_deref(), Some("1"), "forgotten once caught up");
    }

    #[test]
    fn a_version_someone_else_wrote_is_read_from_the_cache() {
        let writes = OwnWrites::default();
        writes.record(&task("1", None), task("2", Some(TaskPhase::Queued)));
        let read = writes.fresher(Arc::new(task("5", Some(TaskPhase::Canceled))));
        assert_eq!((read.resource_version().as_deref(), phase(&read)), (Some("5"), Some(TaskPhase::Canceled)));
    }

    #[test]
    fn a_write_from_a_version_not_its_own_starts_a_new_chain() {
        let writes = OwnWrites::default();
        writes.record(&task("1", None), task("2", Some(TaskPhase::Queued)));
        // Someone else wrote 3; this process read it and wrote 4.
        writes.record(&task("3", Some(TaskPhase::Queued)), task("4", Some(TaskPhase::Running)));
        let read = writes.fresher(Arc::new(task("1", None)));
        assert_eq!(read.resource_version().as_deref(), Some("1"), "1 was not replaced by the write that made 4");
    }
}
