//! `pxb-server` replicas in the test's (or benchmark's) process: each with its own catalog
//! connection and listener on loopback, run by [`replicas::run`] as the `pxb-server` binary runs
//! one with `replicas.enabled`.

use std::sync::Arc;
use std::time::Duration;

use pxb_daemon::server::ServerBuilder;
use pxb_daemon::server::config::ServerConfig;
use pxb_daemon::server::replicas::{self, ReplicaOptions};

/// One running replica: its name, its API and its task.
#[derive(Debug)]
pub struct InProcessReplica {
    /// Its name (the lease's holder when it is active).
    pub name: String,
    /// Its API, `http://127.0.0.1:…`.
    pub url: String,
    /// Its task: abort it to kill the replica as `kill -9` does (nothing released).
    pub task: tokio::task::JoinHandle<pxb_core::Result<()>>,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl InProcessReplica {
    /// Starts replica `name` over the catalog of `config` (opened anew, as another process would)
    /// with leases of `lease`; `build` adds to each server it builds (a clock, a development
    /// token).
    pub async fn start(
        name: &str,
        config: &ServerConfig,
        lease: Duration,
        build: impl Fn(ServerBuilder) -> ServerBuilder + Send + Sync + 'static,
    ) -> anyhow::Result<InProcessReplica> {
        let store = pxb_daemon::server::open_catalog(&config.catalog).await?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let options = ReplicaOptions {
            me: name.into(),
            advertise: url.clone(),
            lease,
            max_body_bytes: 1 << 20,
        };
        let config = config.clone();
        let build = Arc::new(build);
        let task = tokio::spawn(replicas::run(
            store,
            listener,
            options,
            move |catalog| build(ServerBuilder::new(config.clone()).catalog(catalog)),
            async move {
                let _ = stopped.await;
            },
        ));
        Ok(InProcessReplica {
            name: name.into(),
            url,
            task,
            stop,
        })
    }

    /// Stops it as SIGTERM does (the lease released if it held it); how it ended, within 30 s.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        let ended = tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .map_err(|_| anyhow::anyhow!("replica {} did not stop within 30 s", self.name))??;
        ended.map_err(|e| anyhow::anyhow!("replica {} stopped with {e}", self.name))
    }
}
