//! One way to host a proxy runtime: the extension's worker, `ic-proxy run`,
//! the test meshes and the bench all make a [`ProxyHandle`], start it on
//! their tokio runtime, hand it reloaded configurations, ask it when to
//! trim memory, and stop it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{ProxySettings, RuntimeConfig};
use crate::proxy::{run, Listeners, ProxyError};
use crate::status::StatusBoard;
use crate::trim::TrimPolicy;

/// Why a proxy runtime did not end cleanly.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    #[error("{0}")]
    Failed(ProxyError),
    #[error("the proxy task failed: {0}")]
    Panicked(String),
    #[error("the proxy did not stop within {0:?}")]
    TimedOut(Duration),
}

/// A proxy runtime and what its host needs of it. Made before it starts
/// (so a host can show its status and configuration, e.g. on a control
/// socket, before any listener exists), then [`spawn`](Self::spawn)ed once.
pub struct ProxyHandle {
    config: watch::Sender<Arc<RuntimeConfig>>,
    status: Arc<StatusBoard>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), ProxyError>>>,
    trim: TrimPolicy,
}

impl ProxyHandle {
    /// A handle for a runtime that will start with `config`.
    pub fn new(config: RuntimeConfig) -> ProxyHandle {
        ProxyHandle {
            config: watch::channel(Arc::new(config)).0,
            status: StatusBoard::new(),
            shutdown: CancellationToken::new(),
            task: None,
            trim: TrimPolicy::default(),
        }
    }

    /// Starts the runtime on `runtime` (at most once; a second call does
    /// nothing).
    pub fn spawn(
        &mut self,
        runtime: &tokio::runtime::Handle,
        settings: ProxySettings,
        listeners: Listeners,
    ) {
        if self.task.is_some() {
            return;
        }
        let (config, status, shutdown) = (
            self.config.subscribe(),
            self.status.clone(),
            self.shutdown.clone(),
        );
        self.task = Some(runtime.spawn(run(settings, config, listeners, shutdown, status)));
    }

    /// The runtime's live status.
    pub fn status(&self) -> &Arc<StatusBoard> {
        &self.status
    }

    /// The configuration in force, now and as it changes.
    pub fn config(&self) -> watch::Receiver<Arc<RuntimeConfig>> {
        self.config.subscribe()
    }

    /// The configuration in force now.
    pub fn current(&self) -> Arc<RuntimeConfig> {
        self.config.borrow().clone()
    }

    /// Where another task (a sidecar following its server) sends
    /// configurations.
    pub fn config_sender(&self) -> watch::Sender<Arc<RuntimeConfig>> {
        self.config.clone()
    }

    /// Hands the runtime `next`, which it applies as a diff; false (and
    /// nothing sent) when it equals the configuration in force.
    pub fn reload(&self, next: RuntimeConfig) -> bool {
        self.config.send_if_modified(|cur| {
            let changed = **cur != next;
            if changed {
                *cur = Arc::new(next);
            }
            changed
        })
    }

    /// Called on a regular tick (about a second apart): true when the proxy
    /// went quiet after work, so the host should give freed memory back to
    /// the system now.
    pub fn trim_due(&mut self) -> bool {
        self.trim.tick(&self.status)
    }

    /// True once the runtime has ended by itself (it only does on a
    /// failure) or was stopped.
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_some_and(|t| t.is_finished())
    }

    /// Waits until the runtime ends by itself, which it only does on a
    /// failure; never returns for a handle that was not spawned.
    pub async fn ended(&mut self) -> Result<(), StopError> {
        match &mut self.task {
            Some(task) => {
                let ended = task.await;
                self.task = None;
                outcome(ended)
            }
            None => std::future::pending().await,
        }
    }

    /// Stops the runtime and waits for it, at most `grace`: sessions say
    /// BYE, links send what is queued, the backend socket is removed.
    pub async fn stop(mut self, grace: Duration) -> Result<(), StopError> {
        self.shutdown.cancel();
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        match tokio::time::timeout(grace, task).await {
            Ok(ended) => outcome(ended),
            Err(_) => Err(StopError::TimedOut(grace)),
        }
    }

    /// Asks the runtime to stop without waiting (the host's process is
    /// going away, e.g. its postmaster died).
    pub fn cancel(&self) {
        self.shutdown.cancel();
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn outcome(ended: Result<Result<(), ProxyError>, tokio::task::JoinError>) -> Result<(), StopError> {
    match ended {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(StopError::Failed(e)),
        Err(e) => Err(StopError::Panicked(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address_map::AddressMap;

    fn config() -> RuntimeConfig {
        RuntimeConfig::new(AddressMap::parse("1:-1:127.0.0.1:1").unwrap())
    }

    #[test]
    fn a_reload_equal_to_the_configuration_in_force_is_not_sent() {
        let h = ProxyHandle::new(config());
        let mut rx = h.config();
        rx.borrow_and_update();
        assert!(!h.reload(config()));
        assert!(!rx.has_changed().unwrap());
        let mut next = config();
        next.early_cache_bytes += 1;
        assert!(h.reload(next.clone()));
        assert!(rx.has_changed().unwrap());
        assert_eq!(*h.current(), next);
    }

    #[tokio::test]
    async fn an_unspawned_handle_stops_at_once_and_never_ends_by_itself() {
        let mut h = ProxyHandle::new(config());
        assert!(!h.is_finished());
        let ended = tokio::time::timeout(Duration::from_millis(20), h.ended()).await;
        assert!(
            ended.is_err(),
            "ended() returned for a runtime never started"
        );
        h.stop(Duration::from_secs(1)).await.unwrap();
    }

    #[tokio::test]
    async fn a_runtime_that_cannot_start_ends_by_itself_with_its_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = ProxySettings::new(1, dir.path().join("s"));
        settings.flow.ack_interval = 0;
        let mut h = ProxyHandle::new(config());
        h.spawn(
            &tokio::runtime::Handle::current(),
            settings,
            Listeners::default(),
        );
        let e = tokio::time::timeout(Duration::from_secs(5), h.ended())
            .await
            .expect("a runtime with invalid settings ends at once");
        assert!(
            matches!(e, Err(StopError::Failed(ProxyError::Flow(_)))),
            "{e:?}"
        );
    }
}
