//! The controller's view of the cluster: one reflector per kind, shared by
//! the task reconciler and admission. Objects are trimmed (managed fields
//! dropped) before they are stored, to keep memory per object small.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::Notify;

use crate::domain::TaskKey;
use crate::domain::pod::pod_name;
use crate::resources::{GpuAccount, GpuTask, GpuTemplate, labels};

/// Read-only stores of everything the controller decides from.
#[derive(Clone)]
pub struct Caches {
    pub tasks: Store<GpuTask>,
    pub pods: Store<Pod>,
    pub accounts: Store<GpuAccount>,
    pub templates: Store<GpuTemplate>,
    pub nodes: Store<Node>,
}

/// Changes that drive the task reconciler: every applied or deleted task
/// and task pod, forwarded by the reflectors while `active` (this replica
/// leads). Deletions are forwarded too, so a vanished pod wakes its task.
pub struct Triggers {
    pub tasks: futures::channel::mpsc::UnboundedReceiver<GpuTask>,
    pub pods: futures::channel::mpsc::UnboundedReceiver<Pod>,
    pub active: Arc<AtomicBool>,
}

/// Where a reflector forwards its changes.
type Forward<K> = Option<(futures::channel::mpsc::UnboundedSender<K>, Arc<AtomicBool>)>;

/// Keys (namespace/name) of the objects that changed since their consumer
/// last looked, and whether the reflector relisted meanwhile, which asks
/// for a look at everything.
#[derive(Default)]
pub struct Changed {
    keys: Mutex<HashSet<TaskKey>>,
    relisted: AtomicBool,
}

impl Changed {
    fn mark<K: Resource>(&self, obj: &K) {
        let key =
            TaskKey::new(obj.meta().namespace.clone().unwrap_or_default(), obj.meta().name.clone().unwrap_or_default());
        self.keys.lock().unwrap_or_else(PoisonError::into_inner).insert(key);
    }

    /// Takes every change recorded so far, and whether there was a relist.
    pub fn take(&self) -> (HashSet<TaskKey>, bool) {
        let keys = std::mem::take(&mut *self.keys.lock().unwrap_or_else(PoisonError::into_inner));
        (keys, self.relisted.swap(false, Ordering::SeqCst))
    }
}

/// What changed since each consumer last looked, so that it looks at what
/// changed instead of every object in the caches: the tasks and pods for
/// admission, and the tasks again for webhook delivery.
#[derive(Default)]
pub struct Dirty {
    tasks: Changed,
    pods: Changed,
    /// Tasks that changed since the webhook deliverer last looked.
    pub deliveries: Changed,
    /// An account or template changed (or was relisted) since admission
    /// last compared their specs.
    pub specs: AtomicBool,
    /// A node changed (or the nodes were relisted) since admission last
    /// counted the GPU quota.
    pub nodes: AtomicBool,
    /// A task changed (or the tasks were relisted) since the tasks were
    /// last counted by phase for the metrics.
    pub phases: AtomicBool,
}

/// What changed: tasks, pods (as namespace/name), and whether a cache was relisted.
pub type Changes = (HashSet<TaskKey>, HashSet<TaskKey>, bool);

impl Dirty {
    /// Takes every task and pod change recorded for admission so far.
    pub fn take(&self) -> Changes {
        let (tasks, tasks_relisted) = self.tasks.take();
        let (pods, pods_relisted) = self.pods.take();
        (tasks, pods, tasks_relisted || pods_relisted)
    }
}

/// One of [`Dirty`]'s sets, that a reflector records its changes in.
type DirtySet = fn(&Dirty) -> &Changed;

/// One of [`Dirty`]'s flags, that a reflector raises on every change.
type DirtyFlag = fn(&Dirty) -> &AtomicBool;

/// What a reflector does with each event besides storing it.
struct Hooks<K> {
    forward: Forward<K>,
    dirty: Option<(Arc<Dirty>, Vec<DirtySet>)>,
    flag: Option<(Arc<Dirty>, DirtyFlag)>,
}

fn trim<K: Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
    if let Some(a) = obj.meta_mut().annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// Finished tasks are most of the cache. Their input and the story of how
/// they got there (conditions, message) are never read again by the
/// controller: it only lets their pod go, delivers their webhook (output,
/// times, error) and deletes them after the TTL.
fn trim_task(task: &mut GpuTask) {
    trim(task);
    if task.is_terminal() {
        task.spec.input = serde_json::Value::Null;
        if let Some(status) = task.status.as_mut() {
            status.conditions = Vec::new();
            status.message = None;
        }
    }
}

/// Keeps what the controller decides from. A finished pod that runplane has
/// released (it stays until its task goes) keeps only its identity and phase.
fn trim_pod(pod: &mut Pod) {
    trim(pod);
    let finished = crate::domain::lifecycle::pod_is_terminal(pod);
    if finished && !crate::domain::lifecycle::holds_finalizer(pod) {
        let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
        pod.spec = None;
        pod.status = Some(k8s_openapi::api::core::v1::PodStatus { phase, ..Default::default() });
        pod.metadata.annotations = None;
        return;
    }
    // The input can be large and is on the task already.
    if let Some(spec) = pod.spec.as_mut() {
        for c in &mut spec.containers {
            c.env = None;
        }
    }
}

/// Starts the reflectors. Every change pokes `changed`, which wakes
/// admission, and task and pod changes are recorded in `dirty` for it.
pub fn start(
    client: Client,
    changed: Arc<Notify>,
    dirty: Arc<Dirty>,
) -> (Caches, Triggers, Vec<tokio::task::JoinHandle<()>>) {
    let mut handles = Vec::new();
    let active = Arc::new(AtomicBool::new(false));

    let (task_tx, task_rx) = futures::channel::mpsc::unbounded();
    let (tasks, writer) = reflector::store::<GpuTask>();
    let stream = watcher(Api::<GpuTask>::all(client.clone()), watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(trim_task)
        .reflect(writer);
    let hooks = Hooks {
        forward: Some((task_tx, active.clone())),
        dirty: Some((dirty.clone(), vec![|d| &d.tasks, |d| &d.deliveries])),
        flag: Some((dirty.clone(), |d| &d.phases)),
    };
    handles.push(drive("gputasks", stream, changed.clone(), hooks));

    let (pod_tx, pod_rx) = futures::channel::mpsc::unbounded();
    let (pods, writer) = reflector::store::<Pod>();
    let stream =
        watcher(Api::<Pod>::all(client.clone()), watcher::Config::default().labels(labels::TASK).any_semantic())
            .default_backoff()
            .modify(trim_pod)
            .reflect(writer);
    let hooks =
        Hooks { forward: Some((pod_tx, active.clone())), dirty: Some((dirty.clone(), vec![|d| &d.pods])), flag: None };
    handles.push(drive("pods", stream, changed.clone(), hooks));

    let (accounts, writer) = reflector::store::<GpuAccount>();
    let stream = watcher(Api::<GpuAccount>::all(client.clone()), watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(trim)
        .reflect(writer);
    let hooks = Hooks { forward: None, dirty: None, flag: Some((dirty.clone(), |d| &d.specs)) };
    handles.push(drive("gpuaccounts", stream, changed.clone(), hooks));

    let (templates, writer) = reflector::store::<GpuTemplate>();
    let stream = watcher(Api::<GpuTemplate>::all(client.clone()), watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(trim)
        .reflect(writer);
    let hooks = Hooks { forward: None, dirty: None, flag: Some((dirty.clone(), |d| &d.specs)) };
    handles.push(drive("gputemplates", stream, changed.clone(), hooks));

    let (nodes, writer) = reflector::store::<Node>();
    let stream = watcher(Api::<Node>::all(client), watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(|node: &mut Node| {
            trim(node);
            if let Some(status) = node.status.as_mut() {
                status.images = None;
            }
        })
        .reflect(writer);
    handles.push(drive(
        "nodes",
        stream,
        changed,
        Hooks { forward: None, dirty: None, flag: Some((dirty, |d| &d.nodes)) },
    ));

    (Caches { tasks, pods, accounts, templates, nodes }, Triggers { tasks: task_rx, pods: pod_rx, active }, handles)
}

fn drive<S, K>(kind: &'static str, stream: S, changed: Arc<Notify>, hooks: Hooks<K>) -> tokio::task::JoinHandle<()>
where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    K: Resource + Clone + Send + Sync + 'static,
{
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => {
                    if let Some((tx, active)) = &hooks.forward
                        && active.load(Ordering::Relaxed)
                        && let watcher::Event::Apply(obj) | watcher::Event::Delete(obj) = &event
                    {
                        let _ = tx.unbounded_send(obj.clone());
                    }
                    if let Some((dirty, sets)) = &hooks.dirty {
                        for set in sets {
                            match &event {
                                watcher::Event::Apply(obj) | watcher::Event::Delete(obj) => set(dirty).mark(obj),
                                // A relist replaces the store: look at everything.
                                watcher::Event::InitDone => set(dirty).relisted.store(true, Ordering::SeqCst),
                                watcher::Event::Init | watcher::Event::InitApply(_) => {}
                            }
                        }
                    }
                    if let Some((dirty, flag)) = &hooks.flag
                        && matches!(
                            &event,
                            watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone
                        )
                    {
                        flag(dirty).store(true, Ordering::SeqCst);
                    }
                    changed.notify_one();
                }
                Err(error) => tracing::warn!(kind, %error, "watch error; retrying"),
            }
        }
    })
}

impl Caches {
    /// Waits until every store has its first full list.
    pub async fn wait_until_ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.tasks.wait_until_ready().await?;
        self.pods.wait_until_ready().await?;
        self.accounts.wait_until_ready().await?;
        self.templates.wait_until_ready().await?;
        self.nodes.wait_until_ready().await
    }

    pub fn template(&self, namespace: &str, name: &str) -> Option<Arc<GpuTemplate>> {
        self.templates.get(&ObjectRef::new(name).within(namespace))
    }

    pub fn task(&self, namespace: &str, name: &str) -> Option<Arc<GpuTask>> {
        self.tasks.get(&ObjectRef::new(name).within(namespace))
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        self.pods.get(&ObjectRef::new(name).within(namespace))
    }

    /// The pod of the task's current attempt: a just-created one not yet on
    /// the status first, else the one the status names.
    pub fn current_pod(&self, task: &GpuTask) -> Option<Arc<Pod>> {
        let namespace = task.namespace()?;
        let name = task.name_any();
        let status = task.status.clone().unwrap_or_default();
        let attempts = status.attempts.unwrap_or(0);
        let owned = |pod: &Arc<Pod>| pod.owner_references().iter().any(|o| Some(&o.uid) == task.metadata.uid.as_ref());
        if let Some(pod) = self.pod(&namespace, &pod_name(&name, attempts)).filter(owned) {
            return Some(pod);
        }
        let recorded = status.pod_name.or_else(|| (attempts > 0).then(|| pod_name(&name, attempts - 1)))?;
        self.pod(&namespace, &recorded).filter(owned)
    }

    /// The name of the account that owns `namespace` (see [`Self::owner_of`]).
    pub fn account_of(&self, namespace: &str) -> Option<String> {
        self.owner_of(namespace).map(|a| a.name_any())
    }

    /// The account that owns `namespace`, if exactly one lists it.
    pub fn owner_of(&self, namespace: &str) -> Option<Arc<GpuAccount>> {
        let mut owners = self.accounts.state().into_iter().filter(|a| a.spec.namespaces.iter().any(|n| n == namespace));
        let first = owners.next()?;
        owners.next().is_none().then_some(first)
    }

    /// Which account owns each namespace. A namespace claimed by several
    /// accounts belongs to none of them until the conflict is resolved.
    pub fn accounts_by_namespace(&self) -> BTreeMap<String, Result<Arc<GpuAccount>, Vec<String>>> {
        let mut out: BTreeMap<String, Result<Arc<GpuAccount>, Vec<String>>> = BTreeMap::new();
        let mut accounts = self.accounts.state();
        accounts.sort_by_key(|a| a.name_any());
        for account in accounts {
            for namespace in &account.spec.namespaces {
                match out.get_mut(namespace) {
                    None => {
                        out.insert(namespace.clone(), Ok(account.clone()));
                    }
                    Some(Ok(first)) => {
                        let names = vec![first.name_any(), account.name_any()];
                        out.insert(namespace.clone(), Err(names));
                    }
                    Some(Err(names)) => names.push(account.name_any()),
                }
            }
        }
        out
    }
}
