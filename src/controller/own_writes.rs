//! Writes this process made that its cache has not shown yet: the task
//! reconciler's task statuses and the account writer's account statuses.
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
//! process knows, and the cache's is used. Accounts are read the same way,
//! so that a write after an account's spec changed (credits topped up)
//! starts from the change, not from this process's last write before it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kube::{Resource, ResourceExt};

/// An entry the cache never caught up with (its task deleted, or changed
/// by someone else since) is dropped after this long.
const KEEP: Duration = Duration::from_secs(120);
/// Versions remembered as replaced, per task: enough for the writes that
/// can follow each other before the watch shows the first.
const REPLACED: usize = 8;

/// Objects of one kind by UID.
pub struct OwnWrites<K> {
    objects: Mutex<HashMap<String, Entry<K>>>,
    /// When entries were last pruned by age.
    pruned: Mutex<Option<Instant>>,
}

impl<K> Default for OwnWrites<K> {
    fn default() -> Self {
        Self { objects: Mutex::default(), pruned: Mutex::default() }
    }
}

struct Entry<K> {
    /// Versions this process's writes replaced, oldest first.
    replaced: Vec<String>,
    /// The object as the latest write left it.
    latest: Arc<K>,
    at: Instant,
}

impl<K: Resource> OwnWrites<K> {
    /// Records that `before` was replaced by `after`, both of one object.
    pub fn record(&self, before: &K, after: K) {
        let (Some(uid), Some(replaced)) = (after.meta().uid.clone(), before.resource_version()) else { return };
        let now = Instant::now();
        let mut objects = self.objects.lock().unwrap_or_else(PoisonError::into_inner);
        self.prune(&mut objects, now);
        // A write starts from this process's latest write or from a version
        // read after it (someone else's), so it replaces every version the
        // earlier writes replaced, and the latest of them too.
        let mut versions = match objects.remove(&uid) {
            Some(entry) => {
                let mut versions = entry.replaced;
                versions.extend(entry.latest.resource_version().filter(|v| *v != replaced));
                versions
            }
            None => Vec::new(),
        };
        versions.push(replaced);
        let overflow = versions.len().saturating_sub(REPLACED);
        versions.drain(..overflow);
        objects.insert(uid, Entry { replaced: versions, latest: Arc::new(after), at: now });
    }

    /// The newest version of `cached` this process knows of.
    pub fn fresher(&self, cached: Arc<K>) -> Arc<K> {
        let Some(uid) = cached.meta().uid.as_deref() else { return cached };
        let mut objects = self.objects.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = objects.get(uid) else { return cached };
        let version = cached.resource_version();
        if version.as_ref().is_some_and(|v| entry.replaced.contains(v)) {
            return entry.latest.clone();
        }
        if version == entry.latest.resource_version() {
            // The cache has caught up.
            objects.remove(uid);
        }
        // Otherwise a version someone else wrote, newer than this process's.
        cached
    }

    /// Forgets an object's writes: one of them conflicted, so someone else
    /// has changed it since, and the cache is to be read again.
    pub fn forget(&self, uid: &str) {
        self.objects.lock().unwrap_or_else(PoisonError::into_inner).remove(uid);
    }

    fn prune(&self, objects: &mut HashMap<String, Entry<K>>, now: Instant) {
        let mut pruned = self.pruned.lock().unwrap_or_else(PoisonError::into_inner);
        if pruned.is_some_and(|at| now.duration_since(at) < KEEP) {
            return;
        }
        *pruned = Some(now);
        objects.retain(|_, entry| now.duration_since(entry.at) < KEEP);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.objects.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{GpuTask, GpuTaskSpec, GpuTaskStatus, TaskPhase};

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
    fn a_write_from_someone_elses_version_replaces_what_the_earlier_writes_replaced() {
        let writes = OwnWrites::default();
        writes.record(&task("1", None), task("2", Some(TaskPhase::Queued)));
        // Someone else wrote 3; this process read it (from the apiserver,
        // while its cache still showed 1) and wrote 4.
        writes.record(&task("3", Some(TaskPhase::Queued)), task("4", Some(TaskPhase::Running)));
        for cached in ["1", "2", "3"] {
            let read = writes.fresher(Arc::new(task(cached, None)));
            assert_eq!(read.resource_version().as_deref(), Some("4"), "{cached} is older than 4");
        }
        let read = writes.fresher(Arc::new(task("5", Some(TaskPhase::Canceled))));
        assert_eq!(read.resource_version().as_deref(), Some("5"));
    }
}
