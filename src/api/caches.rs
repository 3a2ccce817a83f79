//! The gateway's view of the cluster: reflectors of GpuTasks, GpuTemplates,
//! GpuAccounts and API-key Secrets. Every read of a request is answered from
//! here; the apiserver only sees the gateway's writes.
//!
//! Tenancy is decided here too: an account owns the namespaces it lists that
//! no other account also lists (the controller's rule), and sees only tasks
//! and templates in those.

use std::collections::HashSet;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::watch;

use super::keys;
use crate::resources::{GpuAccount, GpuTask, GpuTemplate, labels};

#[derive(Clone)]
pub struct Caches {
    pub tasks: Store<GpuTask>,
    pub templates: Store<GpuTemplate>,
    pub accounts: Store<GpuAccount>,
    pub keys: Store<Secret>,
    /// Bumped after every change the task reflector applies; `Prefer: wait` waits on it.
    pub task_changes: watch::Receiver<u64>,
}

fn trim<K: Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
    if let Some(a) = obj.meta_mut().annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// Starts the reflectors; key Secrets are watched in `key_namespace` only.
pub fn start(client: Client, key_namespace: &str) -> (Caches, Vec<tokio::task::JoinHandle<()>>) {
    let (changes_tx, task_changes) = watch::channel(0u64);
    let changes_tx = Arc::new(changes_tx);
    let mut handles = Vec::new();

    let (tasks, writer) = reflector::store::<GpuTask>();
    let stream = watcher(Api::<GpuTask>::all(client.clone()), watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(trim)
        .reflect(writer);
    let bump = changes_tx.clone();
    handles.push(drive("gputasks", stream, move || bump.send_modify(|n| *n = n.wrapping_add(1))));

    let (templates, writer) = reflector::store::<GpuTemplate>();
    let stream = watcher(Api::<GpuTemplate>::all(client.clone()), watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(trim)
        .reflect(writer);
    handles.push(drive("gputemplates", stream, || {}));

    let (accounts, writer) = reflector::store::<GpuAccount>();
    let stream = watcher(Api::<GpuAccount>::all(client.clone()), watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(trim)
        .reflect(writer);
    handles.push(drive("gpuaccounts", stream, || {}));

    let (key_store, writer) = reflector::store::<Secret>();
    let stream = watcher(
        Api::<Secret>::namespaced(client, key_namespace),
        watcher::Config::default()
            .labels(labels::ACCOUNT)
            .fields(&format!("type={}", keys::SECRET_TYPE))
            .any_semantic(),
    )
    .default_backoff()
    .modify(trim)
    .reflect(writer);
    handles.push(drive("secrets", stream, || {}));

    (Caches { tasks, templates, accounts, keys: key_store, task_changes }, handles)
}

fn drive<S, T, F>(kind: &'static str, stream: S, on_change: F) -> tokio::task::JoinHandle<()>
where
    S: Stream<Item = Result<watcher::Event<T>, watcher::Error>> + Send + 'static,
    T: Send + 'static,
    F: Fn() + Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => on_change(),
                Err(error) => tracing::warn!(kind, %error, "watch error; retrying"),
            }
        }
    })
}

impl Caches {
    /// Waits until every store has its first full list.
    pub async fn wait_until_ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.tasks.wait_until_ready().await?;
        self.templates.wait_until_ready().await?;
        self.accounts.wait_until_ready().await?;
        self.keys.wait_until_ready().await
    }

    /// The account of an API key, if the key is stored. The hash of the
    /// presented key is compared with every stored hash in constant time.
    pub fn account_for_key(&self, key: &str) -> Option<String> {
        let hash = keys::hash_key(key);
        self.keys
            .find(|secret| keys::secret_matches(secret, &hash))
            .and_then(|secret| keys::account_of(&secret).map(str::to_string))
    }

    pub fn account(&self, name: &str) -> Option<Arc<GpuAccount>> {
        self.accounts.get(&ObjectRef::new(name))
    }

    /// The namespaces an account owns, in its spec's order: those it lists
    /// that no other account lists too.
    pub fn namespaces_of(&self, account: &GpuAccount) -> Vec<String> {
        let me = account.name_any();
        let claimed_by_others: HashSet<String> = self
            .accounts
            .state()
            .iter()
            .filter(|a| a.name_any() != me)
            .flat_map(|a| a.spec.namespaces.clone())
            .collect();
        let mut seen = HashSet::new();
        account
            .spec
            .namespaces
            .iter()
            .filter(|ns| !claimed_by_others.contains(*ns) && seen.insert(ns.as_str()))
            .cloned()
            .collect()
    }

    /// A task by name in the first of `namespaces` that has one.
    pub fn task(&self, namespaces: &[String], name: &str) -> Option<Arc<GpuTask>> {
        namespaces.iter().find_map(|ns| self.tasks.get(&ObjectRef::new(name).within(ns)))
    }

    /// Every task in `namespaces`.
    pub fn tasks_in(&self, namespaces: &[String]) -> Vec<Arc<GpuTask>> {
        self.tasks.state_filter(|t| t.metadata.namespace.as_ref().is_some_and(|ns| namespaces.contains(ns)))
    }

    pub fn template(&self, namespace: &str, name: &str) -> Option<Arc<GpuTemplate>> {
        self.templates.get(&ObjectRef::new(name).within(namespace))
    }

    /// The template with alias `alias` in the first of `namespaces` that has one.
    pub fn template_by_alias(&self, namespaces: &[String], alias: &str) -> Option<Arc<GpuTemplate>> {
        namespaces.iter().find_map(|ns| {
            let mut found = self.templates.state_filter(|t| {
                t.metadata.namespace.as_deref() == Some(ns.as_str()) && t.spec.aliases.iter().any(|a| a == alias)
            });
            found.sort_by_key(|t| t.name_any());
            found.into_iter().next()
        })
    }
}
