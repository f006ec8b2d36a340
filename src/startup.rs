//! Building and running the application: open the store, load and check the scripts, recover
//! what a previous run left in flight, start the dispatcher, bind and serve. Tests use
//! [`Application::build`] with port 0.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::sync::Notify;

use crate::api::{self, AppState};
use crate::clock::now_ms;
use crate::config::Settings;
use crate::dispatch::{DispatchSettings, Dispatcher};
use crate::route::Live;
use crate::script::{Bundle, engine};
use crate::store::{self, Writer};

pub struct Application {
    pub addr: SocketAddr,
    pub state: AppState,
    pub dispatcher: Arc<Dispatcher>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

/// Asks Linux not to back this process's memory with transparent huge pages. Where THP is
/// `always` (as on the development machine), the allocator's regions are faulted in 2 MiB at a
/// time, so sparsely used memory counts in full: the load bench's peak RSS was 200–210 MB with
/// THP and 165–170 MB without, at the same throughput. Databases embedded in long-running
/// servers are commonly run this way for the same reason.
pub fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes no pointers; it only sets a flag on this process.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// Loads and checks all scripts with the one engine set-up.
pub fn load_live(settings: &Settings) -> anyhow::Result<Live> {
    let engine = Arc::new(engine::build());
    let bundle = Bundle::load(engine, &settings.rules_dir, &settings.adapters_dir)
        .map_err(|e| anyhow::anyhow!("scripts are invalid:\n{e}"))?;
    Live::new(bundle).context("creating DFSP clients")
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let live = load_live(&settings)?;
        let store = store::open(&settings.database_url)
            .await
            .with_context(|| format!("opening {}", settings.database_url))?;
        let recovered = store
            .recover_sending(now_ms(), Some(&settings.instance_id))
            .await
            .context("recovering interrupted sends")?;
        if recovered > 0 {
            tracing::warn!(
                count = recovered,
                "payments were in flight when PIL stopped; they are now unknown and will be looked up"
            );
        }
        for dfsp in store.paused_dfsps().await.context("reading paused DFSPs")? {
            live.paused.set(&dfsp, true);
            tracing::warn!(%dfsp, "DFSP paused by an operator: nothing is routed to it until resumed");
        }
        let listener = tokio::net::TcpListener::bind(&settings.listen)
            .await
            .with_context(|| format!("binding {}", settings.listen))?;
        let addr = listener.local_addr()?;
        let public_url = settings
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{addr}"));
        let writer = Writer::start(store.clone());
        let live = Arc::new(ArcSwap::from_pointee(live));
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let reloader = Arc::new(crate::reload::Reloader::new(
            settings.rules_dir.clone(),
            settings.adapters_dir.clone(),
            live.clone(),
            metrics.clone(),
        ));
        let wake = Arc::new(Notify::new());
        let dispatcher = Dispatcher::new(
            store.clone(),
            writer.clone(),
            live.clone(),
            DispatchSettings {
                workers: settings.workers,
                claim_size: settings.claim_size,
                max_outstanding: settings.max_outstanding,
                idle_ms: settings.idle_ms,
                claim_lease_ms: settings.claim_lease_ms,
                sending_lease_ms: settings.sending_lease_ms,
                public_url,
                instance_id: settings.instance_id.clone(),
            },
            wake.clone(),
            metrics.clone(),
        );
        let tasks = if settings.dispatch {
            dispatcher.spawn()
        } else {
            Vec::new()
        };
        let signer = Arc::new(
            crate::report::Signer::load_or_create(&settings.signing_key_file)
                .context("loading the callback signing key")?,
        );
        let senders = Arc::new(
            crate::api::g2p::resolve_senders(&settings)
                .map_err(|e| anyhow::anyhow!("invalid sender configuration: {e}"))?,
        );
        let mut tasks = tasks;
        if settings.watch_scripts {
            tasks.push(reloader.clone().spawn());
        }
        let settings = Arc::new(settings);
        if settings.dispatch {
            tasks.extend(crate::report::spawn(
                store.clone(),
                signer.clone(),
                settings.clone(),
            ));
        }
        let state = AppState {
            store,
            writer,
            live,
            settings,
            wake,
            signer,
            senders,
            reloader,
            metrics,
            scripts_lock: Arc::new(tokio::sync::Mutex::new(())),
        };
        let app = api::router(state.clone());
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Application {
            addr,
            state,
            dispatcher,
            tasks,
            server: Some(server),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn run_until_stopped(mut self) -> anyhow::Result<()> {
        let server = self.server.take().context("already running")?;
        tokio::select! {
            r = server => r.context("server task")?.context("server")?,
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("stopping: no new sends; waiting for answers to those in flight");
                if self.dispatcher.drain(std::time::Duration::from_secs(20)).await {
                    tracing::info!("stopped cleanly");
                } else {
                    tracing::warn!("stopped with sends in flight; they will be looked up at the next start");
                }
            }
        }
        Ok(())
    }
}

impl Drop for Application {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(s) = &self.server {
            s.abort();
        }
    }
}
