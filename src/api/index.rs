//! Secondary indexes of the gateway's caches, kept up to date from the same
//! watch events that fill the reflector stores, so that a request costs what
//! its own account holds, not what the whole cluster holds:
//!
//! - tasks by namespace, in list order (newest first), with counts by status;
//! - queued tasks by namespace in queue order, so a queue position is a
//!   binary search per namespace of the account;
//! - tasks by name (the progress callback knows only the name) and by
//!   Idempotency-Key hash;
//! - templates by alias; the accounts that list each namespace; API-key
//!   Secrets by hash.
//!
//! The indexes hold names and sort keys only; objects are read from the
//! reflector stores. A relist (`Init` … `InitDone`) builds a fresh index and
//! swaps it in whole, as the stores do.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, RwLock, RwLockReadGuard};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::watcher;

use super::keys;
use super::wire::{self, IDEMPOTENCY_KEY_ANNOTATION, TaskStatus};
use crate::resources::{GpuAccount, GpuTask, GpuTemplate};

/// An index fed by watch events of `K`.
pub trait Index<K>: Default {
    fn apply(&mut self, obj: &K);
    fn delete(&mut self, obj: &K);
}

/// An index shared by the handlers and the watch task that maintains it.
pub struct Shared<I> {
    live: RwLock<I>,
    /// The index being rebuilt during a relist.
    building: Mutex<Option<I>>,
}

impl<I: Default> Default for Shared<I> {
    fn default() -> Self {
        Self { live: RwLock::new(I::default()), building: Mutex::new(None) }
    }
}

impl<I> Shared<I> {
    /// Applies one watch event.
    pub fn handle<K>(&self, event: &watcher::Event<K>)
    where
        I: Index<K>,
    {
        match event {
            watcher::Event::Apply(obj) => self.write().apply(obj),
            watcher::Event::Delete(obj) => self.write().delete(obj),
            watcher::Event::Init => *self.building() = Some(I::default()),
            watcher::Event::InitApply(obj) => self.building().get_or_insert_with(I::default).apply(obj),
            watcher::Event::InitDone => {
                if let Some(fresh) = self.building().take() {
                    *self.write() = fresh;
                }
            }
        }
    }

    pub fn read(&self) -> RwLockReadGuard<'_, I> {
        self.live.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, I> {
        self.live.write().unwrap_or_else(|e| e.into_inner())
    }

    fn building(&self) -> std::sync::MutexGuard<'_, Option<I>> {
        self.building.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// (namespace, name) of an object.
pub type Key = (String, String);

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Key {
    (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default())
}

fn created(task: &GpuTask) -> Timestamp {
    task.metadata.creation_timestamp.as_ref().map(|t| t.0).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Queue order ([`wire::queue_order`]): priority (high first), age, namespace, name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct QueueKey(Reverse<i32>, Timestamp, String, String);

impl QueueKey {
    pub fn of(task: &GpuTask) -> Self {
        let (ns, name) = key_of(&task.metadata);
        Self(Reverse(task.spec.priority), created(task), ns, name)
    }
}

/// List order ([`wire::list_order`]): newest first, then namespace and name, descending.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ListKey(Reverse<i64>, Reverse<String>, Reverse<String>);

impl ListKey {
    pub fn of(task: &GpuTask) -> Self {
        let (ns, name) = key_of(&task.metadata);
        Self(Reverse(created(task).as_second()), Reverse(ns), Reverse(name))
    }

    fn of_cursor(cursor: &wire::Cursor) -> Self {
        Self(Reverse(cursor.created), Reverse(cursor.namespace.clone()), Reverse(cursor.name.clone()))
    }

    pub fn namespace(&self) -> &str {
        &self.1.0
    }

    pub fn name(&self) -> &str {
        &self.2.0
    }
}

/// What the index remembers of a task.
#[derive(Clone, Debug)]
struct TaskEntry {
    status: TaskStatus,
    /// Set while the task waits in the queue (queued and not canceled).
    queue: Option<QueueKey>,
    list: ListKey,
    /// The template id as the client spelled it, and the template's name.
    template_id: String,
    template_name: String,
    idempotency: Option<String>,
}

impl TaskEntry {
    fn of(task: &GpuTask) -> Self {
        let status = TaskStatus::of(task.phase());
        let queued = status == TaskStatus::Queued && !task.spec.cancel;
        Self {
            status,
            queue: queued.then(|| QueueKey::of(task)),
            list: ListKey::of(task),
            template_id: wire::template_id(task),
            template_name: task.spec.template_ref.name.clone(),
            idempotency: task.metadata.annotations.as_ref().and_then(|a| a.get(IDEMPOTENCY_KEY_ANNOTATION)).cloned(),
        }
    }
}

/// The tasks of one namespace.
#[derive(Default, Debug)]
struct Namespace {
    list: BTreeSet<ListKey>,
    /// Queued tasks, sorted in queue order: a rank is a binary search.
    queue: Vec<QueueKey>,
    counts: [u32; 5],
}

fn status_slot(status: TaskStatus) -> usize {
    match status {
        TaskStatus::Queued => 0,
        TaskStatus::Running => 1,
        TaskStatus::Completed => 2,
        TaskStatus::Failed => 3,
        TaskStatus::Canceled => 4,
    }
}

/// Filters of a task listing.
#[derive(Clone, Debug, Default)]
pub struct ListFilter<'a> {
    pub status: Option<TaskStatus>,
    /// Matches the client's template id or the template's name.
    pub template: Option<&'a str>,
}

/// The gateway's index of GpuTasks.
#[derive(Default, Debug)]
pub struct TaskIndex {
    entries: HashMap<Key, TaskEntry>,
    namespaces: HashMap<String, Namespace>,
    by_name: HashMap<String, Vec<String>>,
    by_idempotency: HashMap<String, Vec<Key>>,
}

impl Index<GpuTask> for TaskIndex {
    fn apply(&mut self, task: &GpuTask) {
        let key = key_of(&task.metadata);
        self.remove(&key);
        let entry = TaskEntry::of(task);
        let ns = self.namespaces.entry(key.0.clone()).or_default();
        ns.list.insert(entry.list.clone());
        if let Some(q) = &entry.queue {
            let at = ns.queue.binary_search(q).unwrap_or_else(|at| at);
            ns.queue.insert(at, q.clone());
        }
        ns.counts[status_slot(entry.status)] += 1;
        self.by_name.entry(key.1.clone()).or_default().push(key.0.clone());
        if let Some(hash) = &entry.idempotency {
            self.by_idempotency.entry(hash.clone()).or_default().push(key.clone());
        }
        self.entries.insert(key, entry);
    }

    fn delete(&mut self, task: &GpuTask) {
        self.remove(&key_of(&task.metadata));
    }
}

impl TaskIndex {
    fn remove(&mut self, key: &Key) {
        let Some(entry) = self.entries.remove(key) else {
            return;
        };
        if let Some(ns) = self.namespaces.get_mut(&key.0) {
            ns.list.remove(&entry.list);
            if let Some(q) = &entry.queue
                && let Ok(at) = ns.queue.binary_search(q)
            {
                ns.queue.remove(at);
            }
            let slot = &mut ns.counts[status_slot(entry.status)];
            *slot = slot.saturating_sub(1);
            if ns.list.is_empty() {
                self.namespaces.remove(&key.0);
            }
        }
        if let Some(nss) = self.by_name.get_mut(&key.1) {
            nss.retain(|ns| *ns != key.0);
            if nss.is_empty() {
                self.by_name.remove(&key.1);
            }
        }
        if let Some(hash) = &entry.idempotency
            && let Some(keys) = self.by_idempotency.get_mut(hash)
        {
            keys.retain(|k| k != key);
            if keys.is_empty() {
                self.by_idempotency.remove(hash);
            }
        }
    }

    /// 1-based position of a task among the queued tasks of `namespaces`
    /// (an account's); None unless it is queued. O(namespaces × log n).
    pub fn queue_position(&self, namespaces: &[String], namespace: &str, name: &str) -> Option<u32> {
        let entry = self.entries.get(&(namespace.to_string(), name.to_string()))?;
        let key = entry.queue.as_ref()?;
        let ahead: usize = namespaces
            .iter()
            .filter_map(|ns| self.namespaces.get(ns))
            .map(|ns| ns.queue.partition_point(|q| q < key))
            .sum();
        Some(u32::try_from(ahead).unwrap_or(u32::MAX).saturating_add(1))
    }

    /// Tasks of `namespaces` in a status.
    pub fn count(&self, namespaces: &[String], status: TaskStatus) -> u32 {
        namespaces.iter().filter_map(|ns| self.namespaces.get(ns)).map(|ns| ns.counts[status_slot(status)]).sum()
    }

    /// The namespaces holding a task named `name`.
    pub fn namespaces_with(&self, name: &str) -> &[String] {
        self.by_name.get(name).map(Vec::as_slice).unwrap_or_default()
    }

    /// Tasks of `namespaces` carrying the Idempotency-Key hash `hash`.
    pub fn with_idempotency_key(&self, namespaces: &[String], hash: &str) -> Vec<Key> {
        self.by_idempotency
            .get(hash)
            .map(|keys| keys.iter().filter(|(ns, _)| namespaces.contains(ns)).cloned().collect())
            .unwrap_or_default()
    }

    /// Up to `limit` tasks of `namespaces` that match `filter`, in list
    /// order after `cursor`, and the cursor of the next page if more follow.
    /// Cost: the tasks walked past, not all of the account's tasks.
    pub fn page(
        &self,
        namespaces: &[String],
        filter: &ListFilter<'_>,
        cursor: Option<&wire::Cursor>,
        limit: usize,
    ) -> (Vec<Key>, Option<wire::Cursor>) {
        use std::ops::Bound;
        let start = match cursor {
            Some(c) => Bound::Excluded(ListKey::of_cursor(c)),
            None => Bound::Unbounded,
        };
        let mut seen = std::collections::HashSet::new();
        let mut walks: Vec<_> = namespaces
            .iter()
            .filter(|ns| seen.insert(ns.as_str()))
            .filter_map(|ns| self.namespaces.get(ns))
            .map(|ns| ns.list.range((start.clone(), Bound::Unbounded)).peekable())
            .collect();
        let mut out = Vec::new();
        let mut last: Option<&ListKey> = None;
        loop {
            // The smallest head of the namespaces' walks is next in list order.
            let next = walks
                .iter_mut()
                .enumerate()
                .filter_map(|(i, w)| w.peek().map(|k| (i, *k)))
                .min_by(|a, b| a.1.cmp(b.1))
                .map(|(i, _)| i);
            let Some(i) = next else {
                return (out, None);
            };
            let list_key = walks[i].next().expect("peeked");
            let key = (list_key.namespace().to_string(), list_key.name().to_string());
            let Some(entry) = self.entries.get(&key) else {
                continue;
            };
            if filter.status.is_some_and(|s| s != entry.status) {
                continue;
            }
            if filter.template.is_some_and(|t| t != entry.template_id && t != entry.template_name) {
                continue;
            }
            if out.len() == limit {
                let next = last.map(|k| wire::Cursor {
                    created: k.0.0,
                    namespace: k.namespace().to_string(),
                    name: k.name().to_string(),
                });
                return (out, next);
            }
            out.push(key);
            last = Some(list_key);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Templates by alias.
#[derive(Default, Debug)]
pub struct TemplateIndex {
    aliases: HashMap<Key, Vec<String>>,
    by_alias: HashMap<String, BTreeSet<Key>>,
}

impl Index<GpuTemplate> for TemplateIndex {
    fn apply(&mut self, template: &GpuTemplate) {
        let key = key_of(&template.metadata);
        self.remove(&key);
        for alias in &template.spec.aliases {
            self.by_alias.entry(alias.clone()).or_default().insert(key.clone());
        }
        self.aliases.insert(key, template.spec.aliases.clone());
    }

    fn delete(&mut self, template: &GpuTemplate) {
        self.remove(&key_of(&template.metadata));
    }
}

impl TemplateIndex {
    fn remove(&mut self, key: &Key) {
        for alias in self.aliases.remove(key).unwrap_or_default() {
            if let Some(keys) = self.by_alias.get_mut(&alias) {
                keys.remove(key);
                if keys.is_empty() {
                    self.by_alias.remove(&alias);
                }
            }
        }
    }

    /// The template with `alias` in the first of `namespaces` that has one
    /// (the first by name when a namespace has several).
    pub fn by_alias(&self, namespaces: &[String], alias: &str) -> Option<Key> {
        let keys = self.by_alias.get(alias)?;
        namespaces
            .iter()
            .find_map(|ns| keys.range((ns.clone(), String::new())..).next().filter(|k| k.0 == *ns).cloned())
    }
}

/// Which accounts list each namespace.
#[derive(Default, Debug)]
pub struct AccountIndex {
    namespaces: HashMap<String, Vec<String>>,
    listed_by: HashMap<String, BTreeSet<String>>,
}

impl Index<GpuAccount> for AccountIndex {
    fn apply(&mut self, account: &GpuAccount) {
        let name = account.metadata.name.clone().unwrap_or_default();
        self.remove(&name);
        for ns in &account.spec.namespaces {
            self.listed_by.entry(ns.clone()).or_default().insert(name.clone());
        }
        self.namespaces.insert(name, account.spec.namespaces.clone());
    }

    fn delete(&mut self, account: &GpuAccount) {
        self.remove(account.metadata.name.as_deref().unwrap_or_default());
    }
}

impl AccountIndex {
    fn remove(&mut self, name: &str) {
        for ns in self.namespaces.remove(name).unwrap_or_default() {
            if let Some(accounts) = self.listed_by.get_mut(&ns) {
                accounts.remove(name);
                if accounts.is_empty() {
                    self.listed_by.remove(&ns);
                }
            }
        }
    }

    /// The namespaces `account` owns, in its spec's order: those it lists
    /// that no other account lists too (the controller's rule).
    pub fn owned(&self, account: &GpuAccount) -> Vec<String> {
        let me = account.metadata.name.as_deref().unwrap_or_default();
        let mut out: Vec<String> = Vec::new();
        for ns in &account.spec.namespaces {
            let only_me = self.listed_by.get(ns).is_none_or(|a| a.iter().all(|n| n == me));
            if only_me && !out.contains(ns) {
                out.push(ns.clone());
            }
        }
        out
    }

    /// Whether any account lists `namespace`.
    pub fn is_listed(&self, namespace: &str) -> bool {
        self.listed_by.contains_key(namespace)
    }
}

/// API-key Secrets by the hash they store.
#[derive(Default, Debug)]
pub struct KeyIndex {
    hashes: HashMap<Key, String>,
    by_hash: HashMap<String, BTreeSet<(Key, String)>>,
}

/// A stored key: its Secret and its account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredKey {
    pub secret: Key,
    pub account: String,
}

impl Index<Secret> for KeyIndex {
    fn apply(&mut self, secret: &Secret) {
        let key = key_of(&secret.metadata);
        self.remove(&key);
        let hash = secret.data.as_ref().and_then(|d| d.get(keys::HASH_KEY)).map(|h| h.0.as_slice());
        let (Some(hash), Some(account)) = (hash, keys::account_of(secret)) else {
            return;
        };
        let Ok(hash) = std::str::from_utf8(hash) else {
            return;
        };
        self.by_hash.entry(hash.to_string()).or_default().insert((key.clone(), account.to_string()));
        self.hashes.insert(key, hash.to_string());
    }

    fn delete(&mut self, secret: &Secret) {
        self.remove(&key_of(&secret.metadata));
    }
}

impl KeyIndex {
    fn remove(&mut self, key: &Key) {
        if let Some(hash) = self.hashes.remove(key)
            && let Some(entries) = self.by_hash.get_mut(&hash)
        {
            entries.retain(|(k, _)| k != key);
            if entries.is_empty() {
                self.by_hash.remove(&hash);
            }
        }
    }

    /// The stored key whose hash is `hash` (hex SHA-256 of the presented
    /// key). The map lookup only finds the candidate; the hashes are then
    /// compared in constant time. A lookup's timing can tell at most
    /// something about stored hashes, from which no key can be computed.
    pub fn find(&self, hash: &str) -> Option<StoredKey> {
        use subtle::ConstantTimeEq;
        let entries = self.by_hash.get(hash)?;
        let stored = self.hashes.get(&entries.first()?.0)?;
        if stored.len() != hash.len() || !bool::from(stored.as_bytes().ct_eq(hash.as_bytes())) {
            return None;
        }
        entries.first().map(|(secret, account)| StoredKey { secret: secret.clone(), account: account.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::wire::tests::task;
    use crate::resources::TaskPhase;
    use serde_json::json;

    fn nss(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// A deterministic pseudo-random sequence (no crate needed for a test).
    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        *seed >> 33
    }

    #[test]
    fn queue_positions_match_the_scan_through_every_change() {
        let phases = [None, Some(TaskPhase::Queued), Some(TaskPhase::Running), Some(TaskPhase::Completed)];
        let mut index = TaskIndex::default();
        let mut live: HashMap<Key, GpuTask> = HashMap::new();
        let mut seed = 7;
        for step in 0..600 {
            let ns = ["a", "b", "c"][(lcg(&mut seed) % 3) as usize];
            let name = format!("t{}", lcg(&mut seed) % 40);
            let key = (ns.to_string(), name.clone());
            if lcg(&mut seed).is_multiple_of(5) {
                if let Some(old) = live.remove(&key) {
                    index.delete(&old);
                }
            } else {
                let mut t = task(
                    ns,
                    &name,
                    100 + (lcg(&mut seed) % 10) as i64,
                    (lcg(&mut seed) % 3) as i32,
                    phases[(lcg(&mut seed) % 4) as usize],
                );
                t.spec.cancel = lcg(&mut seed).is_multiple_of(7);
                index.apply(&t);
                live.insert(key, t);
            }
            if step % 20 != 0 {
                continue;
            }
            let account = nss(&["a", "b"]);
            let mine: Vec<&GpuTask> =
                live.values().filter(|t| account.contains(t.metadata.namespace.as_ref().unwrap())).collect();
            for t in live.values() {
                let (ns, name) = key_of(&t.metadata);
                let expected = if account.contains(&ns) { wire::queue_position(t, mine.iter().copied()) } else { None };
                let got = if account.contains(&ns) { index.queue_position(&account, &ns, &name) } else { None };
                assert_eq!(got, expected, "step {step}: {ns}/{name}");
            }
            for status in [TaskStatus::Queued, TaskStatus::Running, TaskStatus::Completed] {
                let expected = mine.iter().filter(|t| TaskStatus::of(t.phase()) == status).count() as u32;
                assert_eq!(index.count(&account, status), expected);
            }
            assert_eq!(index.len(), live.len());
        }
    }

    #[test]
    fn pages_merge_namespaces_newest_first_and_filter() {
        let mut index = TaskIndex::default();
        let mut all = Vec::new();
        for i in 0..9 {
            let ns = if i % 2 == 0 { "a" } else { "b" };
            let phase = if i % 3 == 0 { Some(TaskPhase::Completed) } else { None };
            let t = task(ns, &format!("t{i}"), 100 + i / 2, 0, phase);
            index.apply(&t);
            all.push(t);
        }
        index.apply(&task("other", "t99", 500, 0, None));
        let account = nss(&["a", "b"]);
        let mut expected: Vec<&GpuTask> = all.iter().collect();
        expected.sort_by(|a, b| wire::list_order(a, b));
        let expected: Vec<Key> = expected.iter().map(|t| key_of(&t.metadata)).collect();

        let mut walked = Vec::new();
        let mut cursor = None;
        loop {
            let (keys, next) = index.page(&account, &ListFilter::default(), cursor.as_ref(), 4);
            walked.extend(keys.iter().cloned());
            let Some(next) = next else {
                break;
            };
            let last = all.iter().find(|t| key_of(&t.metadata) == *keys.last().unwrap()).unwrap();
            assert_eq!(next, wire::Cursor::after(last));
            cursor = Some(wire::Cursor::decode(&next.encode()).unwrap());
        }
        assert_eq!(walked, expected);

        let filter = ListFilter { status: Some(TaskStatus::Completed), template: None };
        let (done, next) = index.page(&account, &filter, None, 10);
        assert!(next.is_none());
        let done_names: Vec<&str> = done.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(done_names, vec!["t6", "t3", "t0"]);
        let filter = ListFilter { status: None, template: Some("nope") };
        assert!(index.page(&account, &filter, None, 10).0.is_empty());

        for t in &all {
            index.delete(t);
        }
        assert!(index.page(&account, &ListFilter::default(), None, 10).0.is_empty());
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn names_and_idempotency_keys_are_found() {
        let mut index = TaskIndex::default();
        let mut t = task("a", "task-1", 1, 0, None);
        t.metadata.annotations = Some([(IDEMPOTENCY_KEY_ANNOTATION.to_string(), "h1".to_string())].into());
        index.apply(&t);
        index.apply(&task("b", "task-1", 1, 0, None));
        assert_eq!(index.namespaces_with("task-1"), &["a".to_string(), "b".to_string()]);
        assert_eq!(index.with_idempotency_key(&nss(&["a"]), "h1"), vec![("a".into(), "task-1".into())]);
        assert!(index.with_idempotency_key(&nss(&["b"]), "h1").is_empty());
        index.delete(&t);
        assert_eq!(index.namespaces_with("task-1"), &["b".to_string()]);
        assert!(index.with_idempotency_key(&nss(&["a"]), "h1").is_empty());
    }

    #[test]
    fn a_relist_replaces_the_index() {
        let shared: Shared<TaskIndex> = Shared::default();
        shared.handle(&watcher::Event::Apply(task("a", "old", 1, 0, None)));
        shared.handle(&watcher::Event::Init);
        shared.handle(&watcher::Event::InitApply(task("a", "new", 1, 0, None)));
        assert_eq!(shared.read().namespaces_with("old").len(), 1, "the old index serves until InitDone");
        shared.handle(&watcher::Event::<GpuTask>::InitDone);
        assert!(shared.read().namespaces_with("old").is_empty());
        assert_eq!(shared.read().namespaces_with("new").len(), 1);
    }

    #[test]
    fn templates_by_alias_follow_the_namespace_order() {
        let template = |ns: &str, name: &str, aliases: &[&str]| {
            let mut t: GpuTemplate = serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": ns},
                "spec": {"image": "x", "aliases": aliases},
            }))
            .unwrap();
            t.metadata.namespace = Some(ns.into());
            t
        };
        let mut index = TemplateIndex::default();
        index.apply(&template("a", "z", &["m/x"]));
        index.apply(&template("b", "y", &["m/x", "m/y"]));
        index.apply(&template("b", "c", &["m/x"]));
        assert_eq!(index.by_alias(&nss(&["a", "b"]), "m/x"), Some(("a".into(), "z".into())));
        assert_eq!(index.by_alias(&nss(&["b", "a"]), "m/x"), Some(("b".into(), "c".into())));
        assert_eq!(index.by_alias(&nss(&["c"]), "m/x"), None);
        // An alias removed by an update is gone.
        index.apply(&template("b", "y", &["m/z"]));
        assert_eq!(index.by_alias(&nss(&["b"]), "m/y"), None);
        assert_eq!(index.by_alias(&nss(&["b"]), "m/z"), Some(("b".into(), "y".into())));
        index.delete(&template("a", "z", &[]));
        assert_eq!(index.by_alias(&nss(&["a"]), "m/x"), None);
    }

    #[test]
    fn namespaces_listed_by_two_accounts_belong_to_neither() {
        let account = |name: &str, namespaces: &[&str]| -> GpuAccount {
            serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"plan": "free", "namespaces": namespaces},
            }))
            .unwrap()
        };
        let mut index = AccountIndex::default();
        let a = account("a", &["x", "shared", "x"]);
        index.apply(&a);
        assert_eq!(index.owned(&a), nss(&["x", "shared"]));
        index.apply(&account("b", &["shared"]));
        assert_eq!(index.owned(&a), nss(&["x"]));
        assert!(index.is_listed("shared") && index.is_listed("x") && !index.is_listed("keys"));
        index.delete(&account("b", &[]));
        assert_eq!(index.owned(&a), nss(&["x", "shared"]));
    }

    #[test]
    fn keys_are_found_by_hash() {
        let mut index = KeyIndex::default();
        let secret = keys::key_secret("rk-1", "keys", "acme", "rk_live_abc");
        index.apply(&secret);
        let found = index.find(&keys::hash_key("rk_live_abc")).unwrap();
        assert_eq!(found, StoredKey { secret: ("keys".into(), "rk-1".into()), account: "acme".into() });
        assert_eq!(index.find(&keys::hash_key("rk_live_abd")), None);
        index.delete(&secret);
        assert_eq!(index.find(&keys::hash_key("rk_live_abc")), None);
    }
}
