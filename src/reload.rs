//! Live scripts: watches `rules/` and `adapters/` and swaps in a changed set of scripts only
//! after it passed every check a start makes (compile, required functions and arities,
//! `adapter.toml`, secrets resolve) plus every adapter's fixtures. A broken edit changes
//! nothing that runs: the last good version stays and the problems (file, line, column,
//! message) are kept for the admin API, the log and the metrics.
//!
//! The swap is one atomic pointer store ([`ArcSwap`]): a payment being sent keeps the adapter
//! version it was mapped with, the next claim sees the new one. DFSP clients (tokens, circuit
//! state, requests in flight) carry over when an adapter's configuration did not change; an
//! adapter whose folder disappears is retired (see [`Live::next`]). This module never touches
//! payments.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::clock::now_ms;
use crate::fixtures;
use crate::route::Live;
use crate::script::{Bundle, LoadErrors, ScriptError};

/// How often the folders are compared even without a file-system event: a safety net for
/// events a platform does not deliver (network file systems, a retargeted top-level symlink).
const RESCAN: Duration = Duration::from_secs(2);
/// Events closer together than this are one change (editors write in several steps).
const DEBOUNCE: Duration = Duration::from_millis(100);

/// One problem with a proposed set of scripts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Problem {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl From<&ScriptError> for Problem {
    fn from(e: &ScriptError) -> Problem {
        Problem {
            file: e.file.clone(),
            line: e.line,
            column: e.column,
            message: e.message.clone(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// What the last reload attempt did, and the counts since start.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct ReloadStatus {
    /// Digest of the script folders in force.
    pub fingerprint: String,
    /// When the folders were last checked after a change (unix ms).
    pub last_attempt_at: Option<i64>,
    /// Problems of the last refused version; empty when the folders' content is in force.
    pub problems: Vec<Problem>,
    pub applied: u64,
    pub refused: u64,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The folders have not changed since the last attempt.
    Unchanged,
    Applied,
    Refused(Vec<Problem>),
}

/// Checks a set of scripts exactly as a reload does: loads it with `engine` and runs every
/// adapter's fixtures. The one validation behind hot reload and the admin API.
pub fn check(
    engine: Arc<rhai::Engine>,
    rules_dir: &Path,
    adapters_dir: &Path,
) -> Result<Bundle, Vec<Problem>> {
    let bundle = Bundle::load(engine, rules_dir, adapters_dir)
        .map_err(|LoadErrors(errors)| errors.iter().map(Problem::from).collect::<Vec<_>>())?;
    // A fixture's diff shows the request a script built, which may hold a secret: problems
    // are logged and shown by the admin API, so they never carry one.
    let secrets = crate::tools::bundle_secrets(&bundle);
    let failed: Vec<Problem> = fixtures::run_all(&bundle, adapters_dir, None)
        .into_iter()
        .filter(|r| !r.passed())
        .map(|r| Problem {
            file: r.file.display().to_string(),
            line: 1,
            column: 1,
            message: crate::tools::redact_text(
                &format!("fixture '{}' fails: {}", r.name, r.problems.join("; ")),
                &secrets,
            ),
        })
        .collect();
    if failed.is_empty() {
        Ok(bundle)
    } else {
        Err(failed)
    }
}

/// Digest of every file under the folders (paths and contents, symlinks followed), so that
/// editors' renames, touches and Kubernetes-style `..data` swaps count only when content moved.
pub fn fingerprint(dirs: &[&Path]) -> String {
    let mut files = Vec::new();
    for dir in dirs {
        collect_files(dir, dir, &mut files, 0);
    }
    files.sort();
    let mut h = Sha256::new();
    for (name, path) in files {
        h.update(name.as_bytes());
        h.update([0u8]);
        match std::fs::read(&path) {
            Ok(bytes) => h.update(&bytes),
            Err(e) => h.update(e.to_string().as_bytes()),
        }
        h.update([0u8]);
    }
    hex::encode(&h.finalize()[..12])
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>, depth: usize) {
    if depth > 8 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        // Hidden entries are editors' swap files and the `..data` machinery of mounted
        // volumes; their visible links are what counts.
        if name.starts_with('.') || name.ends_with('~') {
            continue;
        }
        if path.is_dir() {
            collect_files(root, &path, out, depth + 1);
        } else if path.is_file() {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            out.push((
                format!("{}/{}", root.display(), rel.display()),
                path.clone(),
            ));
        }
    }
}

/// Reloads the scripts in force when their folders change.
pub struct Reloader {
    rules_dir: PathBuf,
    adapters_dir: PathBuf,
    live: Arc<ArcSwap<Live>>,
    /// The fingerprint last looked at (applied or refused), so a refused version is not
    /// checked again until it changes.
    seen: Mutex<String>,
    status: Mutex<ReloadStatus>,
    /// One reload at a time.
    busy: tokio::sync::Mutex<()>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Reloader {
    pub fn new(
        rules_dir: PathBuf,
        adapters_dir: PathBuf,
        live: Arc<ArcSwap<Live>>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Reloader {
        let fp = fingerprint(&[&rules_dir, &adapters_dir]);
        Reloader {
            rules_dir,
            adapters_dir,
            live,
            seen: Mutex::new(fp.clone()),
            status: Mutex::new(ReloadStatus {
                fingerprint: fp,
                ..ReloadStatus::default()
            }),
            busy: tokio::sync::Mutex::new(()),
            metrics,
        }
    }

    pub fn status(&self) -> ReloadStatus {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn rules_dir(&self) -> &Path {
        &self.rules_dir
    }

    pub fn adapters_dir(&self) -> &Path {
        &self.adapters_dir
    }

    /// Checks the folders and swaps them in when they changed and pass. `force` checks them
    /// even when unchanged (e.g. to re-read secret references an operator rotated).
    pub async fn reload(&self, force: bool) -> Outcome {
        let _one = self.busy.lock().await;
        let fp = fingerprint(&[&self.rules_dir, &self.adapters_dir]);
        {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            if !force && *seen == fp {
                return Outcome::Unchanged;
            }
            *seen = fp.clone();
        }
        let engine = self.live.load().bundle.engine.clone();
        let (rules, adapters) = (self.rules_dir.clone(), self.adapters_dir.clone());
        // Compiling and running fixtures is CPU work: keep it off the async workers.
        let checked = tokio::task::spawn_blocking(move || check(engine, &rules, &adapters)).await;
        let result = match checked {
            Ok(Ok(bundle)) => self.live.load().next(bundle).map_err(|e| {
                vec![Problem {
                    file: self.adapters_dir.display().to_string(),
                    line: 1,
                    column: 1,
                    message: format!("cannot create a DFSP client: {e}"),
                }]
            }),
            Ok(Err(problems)) => Err(problems),
            Err(e) => Err(vec![Problem {
                file: self.rules_dir.display().to_string(),
                line: 1,
                column: 1,
                message: format!("the check stopped: {e}"),
            }]),
        };
        let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        status.last_attempt_at = Some(now_ms());
        match result {
            Ok(next) => {
                let versions: Vec<String> =
                    std::iter::once(format!("routing {}", next.bundle.routing.version))
                        .chain(
                            next.bundle
                                .adapters
                                .values()
                                .map(|a| format!("{} {}", a.config.id, a.script.version)),
                        )
                        .collect();
                self.live.store(Arc::new(next));
                status.fingerprint = fp;
                status.problems.clear();
                status.applied += 1;
                self.metrics.reload(true, 0);
                tracing::info!(versions = %versions.join(", "), "scripts reloaded");
                Outcome::Applied
            }
            Err(problems) => {
                status.problems = problems.clone();
                status.refused += 1;
                self.metrics.reload(false, problems.len());
                for p in &problems {
                    tracing::error!(problem = %p, "script change refused; the last good version stays");
                }
                Outcome::Refused(problems)
            }
        }
    }

    /// Watches the folders until the runtime stops: file-system events (debounced) and a
    /// periodic rescan both lead to [`Reloader::reload`].
    pub fn spawn(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let watcher = {
            let tx = tx.clone();
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|e| !e.kind.is_access()) {
                    let _ = tx.send(());
                }
            })
        };
        let watcher = match watcher {
            Ok(mut w) => {
                use notify::Watcher;
                for dir in [&self.rules_dir, &self.adapters_dir] {
                    if let Err(e) = w.watch(dir, notify::RecursiveMode::Recursive) {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch; rescanning every 2 s");
                    }
                }
                Some(w)
            }
            Err(e) => {
                tracing::warn!(error = %e, "no file-system watcher; rescanning every 2 s");
                None
            }
        };
        tokio::spawn(async move {
            // Owned by the task: dropping the watcher would stop the events, dropping the
            // last sender would end the rescans.
            let _watcher = watcher;
            let _sender = tx;
            loop {
                let event = tokio::time::timeout(RESCAN, rx.recv()).await;
                if let Ok(None) = event {
                    return;
                }
                if event.is_ok() {
                    // Let a burst of writes settle, then take them as one change.
                    loop {
                        match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                            Ok(Some(())) => continue,
                            Ok(None) => return,
                            Err(_) => break,
                        }
                    }
                }
                self.reload(false).await;
            }
        })
    }
}
