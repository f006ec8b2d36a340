//! The scripts folders as files, for the admin API: safe relative paths (`rules/...`,
//! `adapters/<dfsp>/...`), listing, reading, atomic writes, and throwaway copies of the whole
//! tree with proposed changes applied (to validate before anything is written). It checks paths
//! and moves bytes; it does not decide whether scripts are valid (that is [`crate::reload::check`])
//! and records nothing.

use std::io::Write;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::reload::Problem;

/// The file types the admin API shows and writes: scripts, adapter configs and fixtures. Any
/// other file in the folders (a README, a secret file someone mounted there) stays invisible.
const EXTENSIONS: &[&str] = &["rhai", "toml", "json"];
/// Deepest folder nesting listed or copied (as the reloader's fingerprint).
const MAX_DEPTH: usize = 8;
const MAX_PATH_LEN: usize = 512;

/// SHA-256 of `bytes` as 64 hex digits: the content hash the admin API shows. A payment's
/// script version is its first 12 digits.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{0}")]
    InvalidPath(String),
    #[error("no file '{0}'")]
    NotFound(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
    move |source| FileError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Which folder a relative path is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Top {
    Rules,
    Adapters,
}

/// Checks the form of a relative path and splits it: `rules/<...>/<file>` or
/// `adapters/<dfsp>/<...>/<file>`, `/`-separated, ending in `.rhai`, `.toml` or `.json`; no
/// `..`, `.`, empty or hidden segment, no backslash, not absolute.
fn parse(rel: &str) -> Result<(Top, Vec<&str>), FileError> {
    let bad = |why: &str| Err(FileError::InvalidPath(format!("'{rel}': {why}")));
    if rel.is_empty() || rel.len() > MAX_PATH_LEN {
        return bad("a path is 1 to 512 characters");
    }
    if rel.contains('\\') || rel.contains('\0') {
        return bad("backslashes and NUL are not allowed; separate folders with '/'");
    }
    if rel.starts_with('/') {
        return bad("must be relative, starting with rules/ or adapters/");
    }
    let segments: Vec<&str> = rel.split('/').collect();
    for s in &segments {
        if s.is_empty() || *s == "." || *s == ".." {
            return bad("empty, '.' and '..' segments are not allowed");
        }
        if s.starts_with('.') || s.ends_with('~') {
            return bad("hidden and backup files are not scripts");
        }
        if s.chars().any(char::is_control) {
            return bad("control characters are not allowed");
        }
    }
    let top = match segments[0] {
        "rules" if segments.len() >= 2 => Top::Rules,
        "adapters" if segments.len() >= 3 => Top::Adapters,
        "rules" | "adapters" => return bad("name a file inside rules/ or adapters/<dfsp>/"),
        _ => return bad("must start with rules/ or adapters/"),
    };
    let name = segments[segments.len() - 1];
    let ext = Path::new(name).extension().and_then(|e| e.to_str());
    if !ext.is_some_and(|e| EXTENSIONS.contains(&e)) {
        return bad("only .rhai, .toml and .json files are scripts, configs or fixtures");
    }
    Ok((top, segments[1..].to_vec()))
}

/// A checked path: where it is on disk (symlinks of existing parts followed) and whether a
/// file is there.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub rel: String,
    pub path: PathBuf,
    pub exists: bool,
}

/// The two scripts folders (`settings.rules_dir`, `settings.adapters_dir`).
#[derive(Debug, Clone)]
pub struct Folders {
    pub rules: PathBuf,
    pub adapters: PathBuf,
}

impl Folders {
    pub fn new(rules: &Path, adapters: &Path) -> Folders {
        Folders {
            rules: rules.to_path_buf(),
            adapters: adapters.to_path_buf(),
        }
    }

    fn root(&self, top: Top) -> &Path {
        match top {
            Top::Rules => &self.rules,
            Top::Adapters => &self.adapters,
        }
    }

    /// Checks `rel` and finds it on disk. The deepest part that exists is resolved with its
    /// symlinks and must stay inside its folder (itself resolved, so a folder that is a
    /// symlink, as mounted volumes are, is fine); what does not exist yet is created there.
    pub fn resolve(&self, rel: &str) -> Result<Resolved, FileError> {
        let (top, segments) = parse(rel)?;
        let root = self.root(top);
        let canonical_root = std::fs::canonicalize(root).map_err(io(root))?;
        let outside = || {
            FileError::InvalidPath(format!(
                "'{rel}' resolves outside {}/",
                match top {
                    Top::Rules => "rules",
                    Top::Adapters => "adapters",
                }
            ))
        };
        for existing in (0..=segments.len()).rev() {
            let candidate = segments[..existing]
                .iter()
                .fold(root.to_path_buf(), |p, s| p.join(s));
            if std::fs::symlink_metadata(&candidate).is_err() {
                continue;
            }
            // A dangling symlink resolves nowhere: refuse rather than write through it.
            let real = std::fs::canonicalize(&candidate).map_err(|_| outside())?;
            if !real.starts_with(&canonical_root) {
                return Err(outside());
            }
            let exists = existing == segments.len();
            if exists && !real.is_file() {
                return Err(FileError::InvalidPath(format!("'{rel}' is not a file")));
            }
            if !exists && !real.is_dir() {
                return Err(FileError::InvalidPath(format!(
                    "'{rel}': '{}' is not a folder",
                    segments[..existing].join("/")
                )));
            }
            let path = segments[existing..].iter().fold(real, |p, s| p.join(s));
            // Nothing past the existing part can be a `..`: parse refused those.
            debug_assert!(path.components().all(|c| c != Component::ParentDir));
            return Ok(Resolved {
                rel: rel.to_string(),
                path,
                exists,
            });
        }
        Err(outside())
    }

    /// The bytes of a file, `None` when there is none.
    pub fn read(&self, r: &Resolved) -> Result<Option<Vec<u8>>, FileError> {
        if !r.exists {
            return Ok(None);
        }
        match std::fs::read(&r.path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&r.path)(e)),
        }
    }

    /// Every script, config and fixture file, sorted by path.
    pub fn list(&self) -> Result<Vec<FileInfo>, FileError> {
        let mut out = Vec::new();
        for (top, name) in [(Top::Rules, "rules"), (Top::Adapters, "adapters")] {
            let root = self.root(top);
            let canonical_root = std::fs::canonicalize(root).map_err(io(root))?;
            walk(root, name, &canonical_root, 0, &mut out);
        }
        out.retain(|f| parse(&f.path).is_ok());
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// Writes a file so that readers (the reloader, another instance) see the old bytes or the
    /// new ones, never a mix: a hidden temporary file in the same folder, flushed to disk, then
    /// renamed over the target. Missing folders are created (a new adapter). The file keeps
    /// its permissions; a new one is readable by all (like a checked-out file).
    pub fn write_atomic(&self, r: &Resolved, bytes: &[u8]) -> Result<(), FileError> {
        let parent = r
            .path
            .parent()
            .ok_or_else(|| FileError::InvalidPath(format!("'{}' has no folder", r.rel)))?;
        std::fs::create_dir_all(parent).map_err(io(parent))?;
        let permissions = std::fs::metadata(&r.path).ok().map(|m| m.permissions());
        let mut tmp = tempfile::Builder::new()
            .prefix(".pil-write-")
            .tempfile_in(parent)
            .map_err(io(parent))?;
        tmp.write_all(bytes).map_err(io(tmp.path()))?;
        tmp.as_file().sync_all().map_err(io(&r.path))?;
        if let Some(permissions) = permissions.or_else(default_permissions) {
            tmp.as_file()
                .set_permissions(permissions)
                .map_err(io(&r.path))?;
        }
        tmp.persist(&r.path).map_err(|e| io(&r.path)(e.error))?;
        // The rename itself is durable only once the folder is flushed.
        if let Ok(dir) = std::fs::File::open(parent) {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    /// Removes a file written by [`Folders::write_atomic`] that had no previous version (undoing
    /// a write whose recording failed).
    pub fn remove(&self, r: &Resolved) -> Result<(), FileError> {
        match std::fs::remove_file(&r.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&r.path)(e)),
        }
    }

    /// A throwaway copy of both folders (symlinks followed, as the reloader reads them) with
    /// `changes` (relative path, new bytes) applied.
    pub fn proposal(&self, changes: &[(String, Vec<u8>)]) -> Result<Proposal, FileError> {
        let dir = tempfile::Builder::new()
            .prefix("pil-proposal-")
            .tempdir()
            .map_err(|source| FileError::Io {
                path: "temporary folder".into(),
                source,
            })?;
        let rules = dir.path().join("rules");
        let adapters = dir.path().join("adapters");
        copy_tree(&self.rules, &rules, 0)?;
        copy_tree(&self.adapters, &adapters, 0)?;
        for (rel, bytes) in changes {
            let (top, segments) = parse(rel)?;
            let base = match top {
                Top::Rules => &rules,
                Top::Adapters => &adapters,
            };
            let path = segments.iter().fold(base.clone(), |p, s| p.join(s));
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(io(parent))?;
            }
            std::fs::write(&path, bytes).map_err(io(&path))?;
        }
        Ok(Proposal {
            _dir: dir,
            rules,
            adapters,
        })
    }

    /// Problems found in these folders, with paths relative (`rules/...`, `adapters/...`).
    pub fn relative(&self, problems: Vec<Problem>) -> Vec<Problem> {
        relative(
            problems,
            &[(&self.rules, "rules"), (&self.adapters, "adapters")],
        )
    }
}

/// Temporary files are private (0600); a script file is not a secret.
#[cfg(unix)]
fn default_permissions() -> Option<std::fs::Permissions> {
    use std::os::unix::fs::PermissionsExt;
    Some(std::fs::Permissions::from_mode(0o644))
}

#[cfg(not(unix))]
fn default_permissions() -> Option<std::fs::Permissions> {
    None
}

/// One listed file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct FileInfo {
    /// e.g. `adapters/mtn-momo/adapter.rhai`.
    pub path: String,
    pub size: u64,
    /// SHA-256 of the content (hex).
    pub hash: String,
}

fn walk(dir: &Path, rel: &str, root: &Path, depth: usize, out: &mut Vec<FileInfo>) {
    if depth > MAX_DEPTH {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with('.') || name.ends_with('~') {
            continue;
        }
        let path = entry.path();
        // Only what really lives inside the folder: a symlink out of it is not shown (and
        // could not be read through the API either).
        let Ok(real) = std::fs::canonicalize(&path) else {
            continue;
        };
        if !real.starts_with(root) {
            continue;
        }
        let child = format!("{rel}/{name}");
        if real.is_dir() {
            walk(&path, &child, root, depth + 1, out);
        } else if real.is_file() {
            let Ok(bytes) = std::fs::read(&real) else {
                continue;
            };
            out.push(FileInfo {
                path: child,
                size: bytes.len() as u64,
                hash: sha256_hex(&bytes),
            });
        }
    }
}

fn copy_tree(from: &Path, to: &Path, depth: usize) -> Result<(), FileError> {
    std::fs::create_dir_all(to).map_err(io(to))?;
    if depth > MAX_DEPTH {
        return Ok(());
    }
    let entries = match std::fs::read_dir(from) {
        Ok(e) => e,
        // A missing folder is copied as an empty one: the check then reports it as the
        // reloader would.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(from)(e)),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let target = to.join(entry.file_name());
        if path.is_dir() {
            copy_tree(&path, &target, depth + 1)?;
        } else if path.is_file() {
            std::fs::copy(&path, &target).map_err(io(&path))?;
        }
    }
    Ok(())
}

/// A copy of the scripts folders with proposed changes, deleted when dropped.
pub struct Proposal {
    /// Owned so the copy lives as long as the proposal.
    _dir: tempfile::TempDir,
    pub rules: PathBuf,
    pub adapters: PathBuf,
}

impl Proposal {
    /// Problems found in the copy, with paths relative (`rules/...`), never the temporary
    /// folder's.
    pub fn relative(&self, problems: Vec<Problem>) -> Vec<Problem> {
        relative(
            problems,
            &[(&self.rules, "rules"), (&self.adapters, "adapters")],
        )
    }
}

/// Rewrites `<root>/...` to `<label>/...` in problems' files and messages.
fn relative(problems: Vec<Problem>, roots: &[(&Path, &str)]) -> Vec<Problem> {
    problems
        .into_iter()
        .map(|mut p| {
            for (root, label) in roots {
                let root = root.display().to_string();
                let root = root.trim_end_matches('/');
                if p.file == root {
                    p.file = label.to_string();
                } else if let Some(rest) = p.file.strip_prefix(&format!("{root}/")) {
                    p.file = format!("{label}/{rest}");
                }
                p.message = p.message.replace(&format!("{root}/"), &format!("{label}/"));
            }
            p
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folders() -> (tempfile::TempDir, Folders) {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(dir.path().join("rules")).expect("rules");
        std::fs::create_dir_all(dir.path().join("adapters/x/tests")).expect("adapters");
        std::fs::write(
            dir.path().join("rules/routing.rhai"),
            "fn route(p, c) { \"x\" }",
        )
        .expect("write");
        let f = Folders::new(&dir.path().join("rules"), &dir.path().join("adapters"));
        (dir, f)
    }

    #[test]
    fn only_plain_relative_script_paths_pass() {
        for good in [
            "rules/routing.rhai",
            "adapters/mtn-momo/adapter.toml",
            "adapters/mtn-momo/tests/x.json",
        ] {
            assert!(parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "rules/../../etc/passwd.rhai",
            "rules/./routing.rhai",
            "rules//routing.rhai",
            "rules\\routing.rhai",
            "rules/.hidden.rhai",
            "adapters/.git/config.toml",
            "rules/routing.rhai~",
            "rules/notes.md",
            "adapters/x.toml",
            "other/routing.rhai",
            "rules",
        ] {
            assert!(
                matches!(parse(bad), Err(FileError::InvalidPath(_))),
                "{bad}"
            );
        }
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_out_of_the_folders_are_refused() {
        let (dir, f) = folders();
        let outside = tempfile::tempdir().expect("outside");
        std::fs::write(outside.path().join("secret.rhai"), "s3cr3t").expect("write");
        std::os::unix::fs::symlink(
            outside.path().join("secret.rhai"),
            dir.path().join("rules/leak.rhai"),
        )
        .expect("link");
        std::os::unix::fs::symlink(outside.path(), dir.path().join("adapters/evil")).expect("link");
        for rel in [
            "rules/leak.rhai",
            "adapters/evil/secret.rhai",
            "adapters/evil/new.rhai",
        ] {
            assert!(
                matches!(f.resolve(rel), Err(FileError::InvalidPath(_))),
                "{rel}"
            );
        }
        let listed: Vec<String> = f
            .list()
            .expect("list")
            .into_iter()
            .map(|i| i.path)
            .collect();
        assert_eq!(listed, vec!["rules/routing.rhai".to_string()]);
        // A folder that is itself a symlink (a mounted volume) is fine.
        let mounted = tempfile::tempdir().expect("mounted");
        let link = mounted.path().join("rules");
        std::os::unix::fs::symlink(dir.path().join("rules"), &link).expect("link");
        let f2 = Folders::new(&link, &dir.path().join("adapters"));
        assert!(f2.resolve("rules/routing.rhai").expect("inside").exists);
    }

    #[test]
    fn writes_are_atomic_and_create_folders() {
        let (dir, f) = folders();
        let r = f
            .resolve("adapters/new-dfsp/tests/a.json")
            .expect("resolve");
        assert!(!r.exists);
        f.write_atomic(&r, b"{}").expect("write");
        assert_eq!(
            std::fs::read(dir.path().join("adapters/new-dfsp/tests/a.json")).expect("read"),
            b"{}"
        );
        let names: Vec<_> = std::fs::read_dir(dir.path().join("adapters/new-dfsp/tests"))
            .expect("dir")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
    }

    #[test]
    fn proposals_report_relative_paths() {
        let (_dir, f) = folders();
        let p = f
            .proposal(&[("rules/routing.rhai".into(), b"changed".to_vec())])
            .expect("proposal");
        assert_eq!(
            std::fs::read(p.rules.join("routing.rhai")).expect("read"),
            b"changed"
        );
        let problems = p.relative(vec![Problem {
            file: p.rules.join("routing.rhai").display().to_string(),
            line: 1,
            column: 2,
            message: format!("cannot read {}/x", p.adapters.display()),
        }]);
        assert_eq!(problems[0].file, "rules/routing.rhai");
        assert_eq!(problems[0].message, "cannot read adapters/x");
    }
}
