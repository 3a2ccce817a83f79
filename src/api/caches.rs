//! The gateway's view of the cluster: reflectors of GpuTasks, GpuTemplates,
//! GpuAccounts and API-key Secrets. Every read of a request is answered from
//! here; the apiserver only sees the gateway's writes.
//!
//! Tenancy is decided here too: an account owns the namespaces it lists that
//! no other account also lists (the controller's rule), and sees only tasks
//! and templates in those.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use tokio::sync::watch;

use super::index::{AccountIndex, Key, KeyIndex, Shared, TaskIndex, TemplateIndex};
use super::keys;
use crate::resources::{GpuAccount, GpuTask, GpuTemplate, labels};

#[derive(Clone)]
pub struct Caches {
    pub tasks: Store<GpuTask>,
    pub templates: Store<GpuTemplate>,
    pub accounts: Store<GpuAccount>,
    pub keys: Store<Secret>,
    /// Indexes fed by the same watch events as the stores (see [`super::index`]).
    pub task_index: Arc<Shared<TaskIndex>>,
    pub template_index: Arc<Shared<TemplateIndex>>,
    pub account_index: Arc<Shared<AccountIndex>>,
    pub key_index: Arc<Shared<KeyIndex>>,
    /// Bumped after every change the task reflector applies; `Prefer: wait` waits on it.
    pub task_changes: watch::Receiver<u64>,
}

fn trim<K: Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
    if let Some(a) = obj.meta_mut().annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// The gateway answers from a task's spec and status fields, never from
/// its conditions (the story `kubectl describe` tells): they go.
fn trim_task(task: &mut GpuTask) {
    trim(task);
    if let Some(status) = task.status.as_mut() {
        status.conditions = Vec::new();
    }
}

/// Starts the reflectors; key Secrets are watched in `key_namespace` only.
pub fn start(client: Client, key_namespace: &str) -> (Caches, Vec<tokio::task::JoinHandle<()>>) {
    let (changes_tx, task_changes) = watch::channel(0u64);
    let mut handles = Vec::new();
    let task_index: Arc<Shared<TaskIndex>> = Arc::default();
    let template_index: Arc<Shared<TemplateIndex>> = Arc::default();
    let account_index: Arc<Shared<AccountIndex>> = Arc::default();
    let key_index: Arc<Shared<KeyIndex>> = Arc::default();

    let (tasks, writer) = reflector::store::<GpuTask>();
    let stream = watcher(Api::<GpuTask>::all(client.clone()), watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(trim_task)
        .reflect(writer);
    let index = task_index.clone();
    handles.push(drive("gputasks", stream, move |event| {
        index.handle(event);
        changes_tx.send_modify(|n| *n = n.wrapping_add(1));
    }));

    let (templates, writer) = reflector::store::<GpuTemplate>();
    let stream = watcher(Api::<GpuTemplate>::all(client.clone()), watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(trim)
        .reflect(writer);
    let index = template_index.clone();
    handles.push(drive("gputemplates", stream, move |event| index.handle(event)));

    let (accounts, writer) = reflector::store::<GpuAccount>();
    let stream = watcher(Api::<GpuAccount>::all(client.clone()), watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(trim)
        .reflect(writer);
    let index = account_index.clone();
    handles.push(drive("gpuaccounts", stream, move |event| index.handle(event)));

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
    let index = key_index.clone();
    handles.push(drive("secrets", stream, move |event| index.handle(event)));

    let caches = Caches {
        tasks,
        templates,
        accounts,
        keys: key_store,
        task_index,
        template_index,
        account_index,
        key_index,
        task_changes,
    };
    (caches, handles)
}

/// Caches fed by hand, not by watches: for tests. Returns the task store's
/// writer and the sender that announces task changes.
#[cfg(test)]
pub fn detached() -> (Caches, reflector::store::Writer<GpuTask>, watch::Sender<u64>) {
    let (changes_tx, task_changes) = watch::channel(0u64);
    let (tasks, task_writer) = reflector::store::<GpuTask>();
    let caches = Caches {
        tasks,
        templates: reflector::store::<GpuTemplate>().0,
        accounts: reflector::store::<GpuAccount>().0,
        keys: reflector::store::<Secret>().0,
        task_index: Arc::default(),
        template_index: Arc::default(),
        account_index: Arc::default(),
        key_index: Arc::default(),
        task_changes,
    };
    (caches, task_writer, changes_tx)
}

fn drive<S, T, F>(kind: &'static str, stream: S, on_event: F) -> tokio::task::JoinHandle<()>
where
    S: Stream<Item = Result<watcher::Event<T>, watcher::Error>> + Send + 'static,
    T: Send + 'static,
    F: Fn(&watcher::Event<T>) + Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => on_event(&event),
                Err(error) => tracing::warn!(kind, %error, "watch error; retrying"),
            }
        }
    })
}

/// Why an API key is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRefusal {
    /// No stored key has this hash.
    Unknown,
    /// The key's Secret is in a namespace that a GpuAccount lists: a tenant
    /// who may create Secrets there could have minted it.
    TenantNamespace { namespace: String, account: String },
}

impl Caches {
    /// Waits until every store has its first full list.
    pub async fn wait_until_ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.tasks.wait_until_ready().await?;
        self.templates.wait_until_ready().await?;
        self.accounts.wait_until_ready().await?;
        self.keys.wait_until_ready().await
    }

    /// The account of an API key, if the key is stored in a namespace no
    /// account lists. Found by the hash of the presented key, which is then
    /// compared with the stored one in constant time.
    pub fn account_for_key(&self, key: &str) -> Result<String, KeyRefusal> {
        let hash = keys::hash_key(key);
        let stored = self.key_index.read().find(&hash).ok_or(KeyRefusal::Unknown)?;
        if self.account_index.read().is_listed(&stored.secret.0) {
            return Err(KeyRefusal::TenantNamespace { namespace: stored.secret.0, account: stored.account });
        }
        Ok(stored.account)
    }

    pub fn account(&self, name: &str) -> Option<Arc<GpuAccount>> {
        self.accounts.get(&ObjectRef::new(name))
    }

    /// The namespaces an account owns, in its spec's order: those it lists
    /// that no other account lists too.
    pub fn namespaces_of(&self, account: &GpuAccount) -> Vec<String> {
        self.account_index.read().owned(account)
    }

    /// A task by name in the first of `namespaces` that has one.
    pub fn task(&self, namespaces: &[String], name: &str) -> Option<Arc<GpuTask>> {
        namespaces.iter().find_map(|ns| self.tasks.get(&ObjectRef::new(name).within(ns)))
    }

    /// Every task named `name`, in whichever namespace.
    pub fn tasks_named(&self, name: &str) -> Vec<Arc<GpuTask>> {
        let namespaces = self.task_index.read().namespaces_with(name).to_vec();
        namespaces.iter().filter_map(|ns| self.tasks.get(&ObjectRef::new(name).within(ns))).collect()
    }

    /// The task at `key`.
    pub fn task_at(&self, key: &Key) -> Option<Arc<GpuTask>> {
        self.tasks.get(&ObjectRef::new(&key.1).within(&key.0))
    }

    pub fn template(&self, namespace: &str, name: &str) -> Option<Arc<GpuTemplate>> {
        self.templates.get(&ObjectRef::new(name).within(namespace))
    }

    /// The template a `/v1/run` template id names: in the first of
    /// `namespaces` (the account's, in its spec's order) that has one, the
    /// exact name before the form with `_` turned into `-`.
    pub fn template_by_id(&self, namespaces: &[String], template_id: &str) -> Option<Arc<GpuTemplate>> {
        let names = super::wire::template_names(template_id);
        namespaces.iter().find_map(|ns| names.iter().find_map(|name| self.template(ns, name)))
    }

    /// The template with alias `alias` in the first of `namespaces` that has
    /// one (the first by name when a namespace has several).
    pub fn template_by_alias(&self, namespaces: &[String], alias: &str) -> Option<Arc<GpuTemplate>> {
        let key = self.template_index.read().by_alias(namespaces, alias)?;
        self.template(&key.0, &key.1)
    }
}
