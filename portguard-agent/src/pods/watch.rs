//! The pod list/watch: a task that follows the API server and hands pod
//! changes to the daemon over a channel.
//!
//! kube's watcher lists first, then watches from the list's
//! resourceVersion, resumes a broken watch from the last version it saw, and
//! lists again when the server answers 410 Gone. Errors are passed on (the
//! daemon logs them and keeps enforcing what it knows) and retried with
//! exponential backoff.

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, Config,
    runtime::{WatchStreamExt as _, watcher},
};
use tokio::sync::mpsc;

use super::PodInfo;

/// How to reach the API server.
#[derive(Debug, Clone)]
pub(crate) struct ApiSettings {
    /// An explicit API URL (no credentials: a local test server, or
    /// `kubectl proxy`); otherwise the in-cluster service account or the
    /// kubeconfig (`KUBECONFIG`, `~/.kube/config`).
    pub(crate) url: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum WatchError {
    #[error("--kube-api {url:?} is not a URL: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot configure the Kubernetes client: {0}")]
    Config(#[from] kube::config::InferConfigError),
    #[error("cannot build the Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// A change in the pods of this node, as the watch task reports it.
#[derive(Debug, Clone)]
pub(crate) enum PodUpdate {
    /// Every pod of the node, from a (re)list: replaces what was known.
    Listed(Vec<PodInfo>),
    /// A pod was added or changed.
    Applied(PodInfo),
    /// The pod with this UID was deleted.
    Deleted(String),
    /// The API server could not be reached, or refused; the watch retries.
    Unreachable(String),
}

/// A client for the configured API server. Building it makes no request.
pub(crate) async fn connect(settings: &ApiSettings) -> Result<Client, WatchError> {
    let config = match &settings.url {
        Some(url) => Config::new(
            url.parse().map_err(|e| WatchError::BadUrl { url: url.clone(), reason: format!("{e}") })?,
        ),
        None => Config::infer().await?,
    };
    Ok(Client::try_from(config)?)
}

/// The running watch task; dropping it stops the watch.
pub(crate) struct PodWatch {
    pub(crate) updates: mpsc::UnboundedReceiver<PodUpdate>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PodWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts following the pods of `node_name`; updates arrive on the channel.
pub(crate) fn spawn_watch(client: Client, node_name: &str) -> PodWatch {
    let (tx, rx) = mpsc::unbounded_channel();
    let pods: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node_name}"));
    let mut stream = watcher(pods, config).default_backoff().boxed();
    let task = tokio::spawn(async move {
        // A (re)list arrives as Init, InitApply..., InitDone: collect it and
        // hand it over whole, so pods deleted meanwhile drop out at once.
        let mut listing: Option<Vec<PodInfo>> = None;
        while let Some(item) = stream.next().await {
            let update = match item {
                Ok(watcher::Event::Init) => {
                    listing = Some(Vec::new());
                    continue;
                }
                Ok(watcher::Event::InitApply(pod)) => {
                    listing.get_or_insert_default().extend(PodInfo::from_pod(&pod));
                    continue;
                }
                Ok(watcher::Event::InitDone) => PodUpdate::Listed(listing.take().unwrap_or_default()),
                Ok(watcher::Event::Apply(pod)) => match PodInfo::from_pod(&pod) {
                    Some(p) => PodUpdate::Applied(p),
                    None => continue,
                },
                Ok(watcher::Event::Delete(pod)) => match pod.metadata.uid {
                    Some(uid) => PodUpdate::Deleted(uid),
                    None => continue,
                },
                Err(e) => PodUpdate::Unreachable(e.to_string()),
            };
            if tx.send(update).is_err() {
                return; // the daemon has stopped
            }
        }
    });
    PodWatch { updates: rx, task }
}
