//! The `runplane` binary: one executable, one subcommand per role.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use jiff::SignedDuration;
use runplane::controller;
use runplane::domain::lifecycle::LifecycleConfig;
use runplane::domain::pod::PodConfig;
use runplane::resources::Plans;
use runplane::telemetry::{LogFormat, init_logging};

#[derive(Parser)]
#[command(name = "runplane", version, about = "An on-demand GPU task service on Kubernetes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions as multi-document YAML.
    Crds,
    /// Run the controller: queue, admit and run GpuTasks as GPU pods.
    Controller(Box<ControllerArgs>),
    /// Serve the HTTP API (RunKey /v1 and RunningHub /openapi/v2) on top of GpuTasks.
    Api(ApiArgs),
    /// Create, list and revoke API keys.
    #[command(subcommand)]
    Apikey(ApikeyCommand),
    /// Run a template through the API and print the task id (and, with --wait, its output).
    Run(RunArgs),
    /// Get, cancel or list tasks through the API.
    #[command(subcommand)]
    Task(TaskCommand),
}

#[derive(Args)]
struct ApiArgs {
    #[command(flatten)]
    kube: KubeArgs,
    /// Address to serve the API on.
    #[arg(long, env = "RUNPLANE_API_ADDR", default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// Namespace of the API-key Secrets; it must be one no GpuAccount lists (keys found in a tenant's namespace are refused).
    #[arg(long, env = "RUNPLANE_NAMESPACE", default_value = "runplane-system")]
    namespace: String,
    /// File holding the key that derives per-task progress tokens (shared with the controller); without it progress callbacks are refused. It also authenticates the replicas to each other.
    #[arg(long, env = "RUNPLANE_CALLBACK_KEY_FILE")]
    callback_key_file: Option<PathBuf>,
    /// Another gateway replica (host:port or base URL) to share rate-limit counts with; repeatable.
    #[arg(long = "peer", value_name = "HOST:PORT")]
    peers: Vec<String>,
    /// Share rate-limit counts with the ready endpoints of this Service (read from its EndpointSlices).
    #[arg(long, value_name = "NAME")]
    peer_service: Option<String>,
    /// Namespace of --peer-service; the pod's namespace, else --namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    peer_namespace: Option<String>,
    /// Destinations a submitted webhook_url may name although they are private or loopback (CIDR, repeatable; give the controller the same).
    #[arg(long = "webhook-allow-cidr", value_name = "CIDR")]
    webhook_allow_cidr: Vec<ipnet::IpNet>,
    /// Limits of a plan: NAME=CONCURRENT,RPM[,GPUS] (free, pro or team; repeatable). Defaults: free=5,30 pro=10,60 team=25,120. Give the controller the same.
    #[arg(long = "plan", value_name = "NAME=CONCURRENT,RPM[,GPUS]")]
    plan: Vec<String>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum ApikeyCommand {
    /// Create a key for an account; prints the key once (only its hash is stored).
    Create {
        #[command(flatten)]
        kube: KubeArgs,
        /// The GpuAccount the key acts for.
        #[arg(long)]
        account: String,
        /// Namespace of the API-key Secrets (the gateway's --namespace).
        #[arg(long, env = "RUNPLANE_NAMESPACE", default_value = "runplane-system")]
        namespace: String,
    },
    /// List the live keys of an account (or of all accounts): id, prefix, creation time. Revoked keys are deleted, so they are not listed.
    List {
        #[command(flatten)]
        kube: KubeArgs,
        /// Only the keys of this GpuAccount.
        #[arg(long)]
        account: Option<String>,
        /// Namespace of the API-key Secrets (the gateway's --namespace).
        #[arg(long, env = "RUNPLANE_NAMESPACE", default_value = "runplane-system")]
        namespace: String,
    },
    /// Revoke a key by its id (as `list` shows it); it stops working within seconds.
    Revoke {
        #[command(flatten)]
        kube: KubeArgs,
        /// The key's id.
        id: String,
        /// Namespace of the API-key Secrets (the gateway's --namespace).
        #[arg(long, env = "RUNPLANE_NAMESPACE", default_value = "runplane-system")]
        namespace: String,
    },
}

/// Where the API is and the key to use.
#[derive(Args, Clone)]
struct ApiClientArgs {
    /// Base URL of the gateway.
    #[arg(long, env = "RUNPLANE_API_URL", default_value = "http://127.0.0.1:8000")]
    api_url: String,
    /// API key (rk_live_…).
    #[arg(long, env = "RUNPLANE_API_KEY", hide_env_values = true)]
    api_key: String,
}

impl ApiClientArgs {
    fn client(&self) -> anyhow::Result<runplane::api::client::ApiClient> {
        Ok(runplane::api::client::ApiClient::new(&self.api_url, &self.api_key)?)
    }
}

/// `runplane run --wait`: the exit status tells how the task ended.
#[derive(Args)]
#[command(
    after_help = "Exit status with --wait: 0 the task completed (its output is printed), 3 it failed, 4 it was canceled, 1 any other error."
)]
struct RunArgs {
    #[command(flatten)]
    api: ApiClientArgs,
    /// The template id.
    template: String,
    /// The input, a JSON object.
    #[arg(long, default_value = "{}")]
    input: String,
    /// Wait for the task to end, showing its progress, then print its output. Polls with `Prefer: wait`, spaced to stay within the account's rate limit.
    #[arg(long)]
    wait: bool,
    /// URL for the completion callback.
    #[arg(long)]
    webhook_url: Option<String>,
    /// Idempotency-Key of the request; a random one by default, so that a retried request makes one task.
    #[arg(long)]
    idempotency_key: Option<String>,
}

#[derive(Subcommand)]
enum TaskCommand {
    /// Print a task as JSON.
    Get {
        #[command(flatten)]
        api: ApiClientArgs,
        task_id: String,
    },
    /// Cancel a task and print it as JSON.
    Cancel {
        #[command(flatten)]
        api: ApiClientArgs,
        task_id: String,
    },
    /// List tasks, newest first, as JSON.
    List {
        #[command(flatten)]
        api: ApiClientArgs,
        /// Only tasks in this status (queued, running, completed, failed, canceled).
        #[arg(long)]
        status: Option<String>,
        /// Only tasks of this template.
        #[arg(long)]
        template: Option<String>,
        /// Page size, 1 to 100.
        #[arg(long)]
        limit: Option<u32>,
        /// The next_cursor of the previous page.
        #[arg(long)]
        cursor: Option<String>,
    },
}

/// Connection to the cluster, shared by every subcommand that talks to it.
#[derive(Args, Clone)]
struct KubeArgs {
    /// Kubeconfig file; in-cluster config or $KUBECONFIG when unset.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
}

impl KubeArgs {
    async fn client(&self) -> anyhow::Result<kube::Client> {
        let config = match &self.kubeconfig {
            Some(path) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(path)
                    .with_context(|| format!("reading kubeconfig {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?
            }
            None => kube::Config::infer().await?,
        };
        Ok(kube::Client::try_from(config)?)
    }
}

#[derive(Args)]
struct ControllerArgs {
    #[command(flatten)]
    kube: KubeArgs,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "RUNPLANE_METRICS_ADDR", default_value = "127.0.0.1:8080")]
    metrics_addr: SocketAddr,
    /// Extended resource name of GPUs, for templates that name none.
    #[arg(long, default_value = runplane::resources::DEFAULT_GPU_RESOURCE)]
    gpu_resource: String,
    /// GPU quota: a number (for --gpu-resource) or RESOURCE=N, repeatable; overrides the default, the allocatable GPUs of Ready nodes.
    #[arg(long = "gpu-quota", value_name = "[RESOURCE=]N")]
    gpu_quota: Vec<String>,
    /// How long an admitted pod may stay unschedulable or fail to start its container before the task fails.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    start_deadline: SignedDuration,
    /// How long past its timeout a running pod may go on before the controller stops it itself.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    timeout_grace: SignedDuration,
    /// First delay before retrying an attempt that failed through no fault of its own; doubles each time.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    retry_backoff: SignedDuration,
    /// Longest retry delay.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    retry_backoff_max: SignedDuration,
    /// A pod that starts within this long after a node took it goes from Queued to Running on its task with no write for the time it was pending (one that no node has taken is recorded as PodStarting after 30 s, one the scheduler cannot place at once).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pending_status_delay: SignedDuration,
    /// A pod that ends within this long after the controller saw it start goes from Queued straight to its end on the task, with no Running status (and Started event) that its end would overwrite a moment later; longer runs show Running this long after that. 0 writes Running at once.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    running_status_delay: SignedDuration,
    /// Record an event on the task at every phase transition (started, completed, queued); false records only what needs a look (failures, retries, cancels, slow starts, rejected input), which saves two API writes per task.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    transition_events: bool,
    /// Routine events (queued, admitted, started, completed) recorded per second at most, beyond a burst; those over it are left out and counted in runplane_events_dropped_total (the task's status says the same). 0 records every one. Failures, retries, cancels and rejected input are always recorded.
    #[arg(long, default_value_t = 10.0, value_parser = parse_event_rate)]
    transition_event_rate: f64,
    /// Routine events that may be recorded at once after a quiet spell.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    transition_event_burst: u32,
    /// Delete finished tasks this long after they end; 0 keeps them.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    finished_ttl: SignedDuration,
    /// UID that task containers run as (pods always run as non-root).
    #[arg(long, default_value_t = 1000)]
    run_as_user: i64,
    /// Base URL of the gateway, given to workloads for progress callbacks.
    #[arg(long, env = "RUNPLANE_CALLBACK_URL")]
    callback_url: Option<String>,
    /// File holding the key that derives per-task progress tokens (shared with the gateway).
    #[arg(long, env = "RUNPLANE_CALLBACK_KEY_FILE")]
    callback_key_file: Option<PathBuf>,
    /// Elect a leader through a Lease so that only one replica acts.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Name of the Lease.
    #[arg(long, default_value = "runplane-controller")]
    lease_name: String,
    /// The controller's namespace: home of its Lease and of webhook Secrets named without one.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// How long a lease lasts without renewal, in seconds.
    #[arg(long, default_value_t = 15)]
    lease_duration: u64,
    /// Identity of this replica in the Lease; the hostname and a random suffix by default.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Destinations a webhook may reach although they are private or loopback (CIDR, repeatable).
    #[arg(long = "webhook-allow-cidr", value_name = "CIDR")]
    webhook_allow_cidr: Vec<ipnet::IpNet>,
    /// First delay before retrying a webhook; doubles per attempt, with jitter.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    webhook_backoff: SignedDuration,
    /// Longest delay between webhook attempts.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    webhook_max_backoff: SignedDuration,
    /// Stop retrying a webhook this long after its first attempt.
    #[arg(long, default_value = "72h", value_parser = parse_duration)]
    webhook_give_up_after: SignedDuration,
    /// Limits of a plan: NAME=CONCURRENT,RPM[,GPUS] (free, pro or team; repeatable). Defaults: free=5,30 pro=10,60 team=25,120. Give the gateway the same.
    #[arg(long = "plan", value_name = "NAME=CONCURRENT,RPM[,GPUS]")]
    plan: Vec<String>,
    /// Tasks reconciled at once. A reconcile mostly waits on the apiserver's writes; on a slow apiserver too few at once make task ends (their status, charge and webhook) trail their pods.
    #[arg(long, default_value_t = 64)]
    reconcile_concurrency: u16,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

fn parse_duration(s: &str) -> Result<SignedDuration, String> {
    if s == "0" {
        return Ok(SignedDuration::ZERO);
    }
    let d: SignedDuration = s.parse().map_err(|e| format!("{s:?} is not a duration like 30s, 5m or 1h: {e}"))?;
    if d.is_negative() {
        return Err("a duration cannot be negative".into());
    }
    Ok(d)
}

fn parse_event_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate >= 0.0 => Ok(rate),
        _ => Err(format!("{s:?} is not a rate of events per second (0 or more, like 10 or 0.5)")),
    }
}

fn parse_quota(values: &[String], default_resource: &str) -> anyhow::Result<Option<BTreeMap<String, i64>>> {
    if values.is_empty() {
        return Ok(None);
    }
    let mut quota = BTreeMap::new();
    for value in values {
        let (resource, n) = value.split_once('=').unwrap_or((default_resource, value));
        let n: i64 = n.parse().with_context(|| format!("--gpu-quota {value}: not a number"))?;
        anyhow::ensure!(n >= 0, "--gpu-quota {value}: must not be negative");
        quota.insert(resource.to_string(), n);
    }
    Ok(Some(quota))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crds => {
            print!("{}", runplane::resources::crds_yaml());
            Ok(())
        }
        Command::Controller(args) => {
            init_logging(args.log_format);
            let client = args.kube.client().await?;
            let callback_key = match &args.callback_key_file {
                Some(path) => Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?),
                None => None,
            };
            let identity = args.identity.clone().unwrap_or_else(|| {
                let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "runplane".into());
                format!("{host}-{:08x}", rand_suffix())
            });
            let config = controller::Config {
                pod: PodConfig {
                    gpu_resource: args.gpu_resource.clone(),
                    run_as_user: args.run_as_user,
                    callback_url: args.callback_url.clone(),
                },
                lifecycle: LifecycleConfig {
                    start_deadline: args.start_deadline,
                    timeout_grace: args.timeout_grace,
                    retry_backoff: args.retry_backoff,
                    retry_backoff_max: args.retry_backoff_max,
                    finished_ttl: (!args.finished_ttl.is_zero()).then_some(args.finished_ttl),
                    pending_status_delay: args.pending_status_delay,
                    running_status_delay: args.running_status_delay,
                    transition_events: args.transition_events,
                    // No flag: the unplaced status delay keeps its default.
                    ..LifecycleConfig::default()
                },
                gpu_quota: parse_quota(&args.gpu_quota, &args.gpu_resource)?,
                callback_key,
                metrics_addr: args.metrics_addr,
                leader_election: args.leader_election.then(|| controller::LeaderElection {
                    lease_name: args.lease_name.clone(),
                    lease_namespace: args.lease_namespace.clone(),
                    identity,
                    lease_duration_secs: args.lease_duration,
                }),
                reconcile_concurrency: args.reconcile_concurrency,
                event_budget: controller::EventBudget {
                    per_second: (args.transition_event_rate > 0.0).then_some(args.transition_event_rate),
                    burst: NonZeroU32::new(args.transition_event_burst)
                        .context("--transition-event-burst is at least 1")?,
                },
                namespace: args.lease_namespace.clone(),
                webhooks: runplane::domain::webhook::WebhookConfig {
                    backoff: args.webhook_backoff,
                    max_backoff: args.webhook_max_backoff,
                    give_up_after: args.webhook_give_up_after,
                    allow: args.webhook_allow_cidr.clone(),
                },
                plans: Plans::from_flags(&args.plan).map_err(|e| anyhow::anyhow!("--plan {e}"))?,
            };
            controller::run(client, config).await
        }
        Command::Api(args) => {
            init_logging(args.log_format);
            let client = args.kube.client().await?;
            let callback_key = match &args.callback_key_file {
                Some(path) => Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?),
                None => None,
            };
            let peer_namespace = args.peer_namespace.clone().unwrap_or_else(|| args.namespace.clone());
            let peers = runplane::api::peers::PeerConfig {
                urls: args.peers.clone(),
                service: args.peer_service.clone().map(|name| (peer_namespace, name)),
            };
            let config = runplane::api::Config {
                listen: args.listen,
                key_namespace: args.namespace.clone(),
                callback_key,
                peers,
                webhook_allow: args.webhook_allow_cidr.clone(),
                plans: Plans::from_flags(&args.plan).map_err(|e| anyhow::anyhow!("--plan {e}"))?,
            };
            runplane::api::run(client, config).await
        }
        Command::Apikey(command) => apikey(command).await,
        Command::Run(args) => run_template(args).await,
        Command::Task(command) => task(command).await,
    }
}

async fn apikey(command: ApikeyCommand) -> anyhow::Result<()> {
    use runplane::api::keys;
    match command {
        ApikeyCommand::Create { kube, account, namespace } => {
            let (id, key) = keys::create(kube.client().await?, &namespace, &account).await?;
            eprintln!(
                "created API key {id} for account {account} (namespace {namespace}); it is shown only this once:"
            );
            println!("{key}");
        }
        ApikeyCommand::List { kube, account, namespace } => {
            let list = keys::list(kube.client().await?, &namespace, account.as_deref()).await?;
            println!("{:<16} {:<20} {:<16} CREATED", "ID", "ACCOUNT", "PREFIX");
            for key in list {
                println!("{:<16} {:<20} {:<16} {}", key.id, key.account, format!("{}…", key.prefix), key.created);
            }
        }
        ApikeyCommand::Revoke { kube, id, namespace } => {
            let key = keys::revoke(kube.client().await?, &namespace, &id).await?;
            eprintln!("revoked API key {} of account {}", key.id, key.account);
        }
    }
    Ok(())
}

async fn run_template(args: RunArgs) -> anyhow::Result<()> {
    let input: serde_json::Value = serde_json::from_str(&args.input).context("--input is not valid JSON")?;
    anyhow::ensure!(input.is_object(), "--input must be a JSON object");
    let client = args.api.client()?;
    // A key of its own makes the request safe to send again when an answer is lost or rate-limited.
    let idempotency_key = args.idempotency_key.clone().unwrap_or_else(runplane::api::client::new_idempotency_key);
    let accepted = client.run(&args.template, input, args.webhook_url.as_deref(), Some(&idempotency_key)).await?;
    if !args.wait {
        println!("{}", accepted.task_id);
        return Ok(());
    }
    eprintln!("{}", accepted.task_id);
    let show = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let task = client.wait(&accepted.task_id, show).await?;
    if !show {
        eprintln!("{}", runplane::api::client::describe(&task));
    }
    use runplane::api::wire::TaskStatus;
    let code = match task.status {
        TaskStatus::Completed => {
            let output = task.output.unwrap_or_else(|| serde_json::json!({}));
            println!("{}", serde_json::to_string_pretty(&output)?);
            return Ok(());
        }
        TaskStatus::Canceled => 4,
        _ => 3,
    };
    eprintln!("error: task {} {}", task.task_id, runplane::api::client::describe(&task));
    std::process::exit(code)
}

async fn task(command: TaskCommand) -> anyhow::Result<()> {
    let value = match command {
        TaskCommand::Get { api, task_id } => serde_json::to_value(api.client()?.get(&task_id).await?)?,
        TaskCommand::Cancel { api, task_id } => serde_json::to_value(api.client()?.cancel(&task_id).await?)?,
        TaskCommand::List { api, status, template, limit, cursor } => {
            let filter = runplane::api::client::ListFilter { status, template_id: template, limit, cursor };
            serde_json::to_value(api.client()?.list(&filter).await?)?
        }
    };
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(())
}

fn rand_suffix() -> u32 {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    nanos ^ std::process::id().rotate_left(16)
}
