//! Scripts: loading and compiling `rules/routing.rhai` and `adapters/<dfsp>/` into one
//! immutable [`Bundle`], checking the contracts of DESIGN.md, and calling them. A script error
//! becomes a [`ScriptError`] with file, line and column for the one payment it concerns; it
//! never panics a worker. This module does no I/O besides reading script files at load.

pub mod convert;
pub mod engine;
pub mod xml;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rhai::{AST, CallFnOptions, Dynamic, Engine, EvalAltResult, Map, Position, Scope};
use sha2::{Digest, Sha256};

use crate::adapter::{AdapterConfig, ConfigError};

/// A script failure located in its file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct ScriptError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl ScriptError {
    fn at(file: &str, pos: Position, message: impl Into<String>) -> ScriptError {
        ScriptError {
            file: file.to_string(),
            line: pos.line().unwrap_or(1),
            column: pos.position().unwrap_or(1),
            message: message.into(),
        }
    }

    fn whole_file(file: &str, message: impl Into<String>) -> ScriptError {
        ScriptError::at(file, Position::new(1, 1), message)
    }

    fn from_config(err: &ConfigError) -> ScriptError {
        match err {
            ConfigError::Invalid { file, message } => ScriptError::whole_file(file, message),
            ConfigError::Parse {
                file,
                line,
                column,
                message,
            } => ScriptError {
                file: file.clone(),
                line: *line,
                column: *column,
                message: message.clone(),
            },
        }
    }

    /// Locates a runtime error at its innermost position (inside the function that failed).
    fn from_eval(file: &str, err: &EvalAltResult) -> ScriptError {
        let mut inner = err;
        while let EvalAltResult::ErrorInFunctionCall(_, _, e, _) = inner {
            inner = e;
        }
        let message = match inner {
            EvalAltResult::ErrorTerminated(reason, _) => reason.to_string(),
            other => strip_position(&other.to_string()),
        };
        ScriptError::at(file, inner.position(), message)
    }
}

fn strip_position(message: &str) -> String {
    match message.rfind(" (line ") {
        Some(i) if message.ends_with(')') => message[..i].to_string(),
        _ => message.to_string(),
    }
}

/// One compiled script file and its content hash (its version, recorded on each payment).
#[derive(Debug, Clone)]
pub struct Script {
    pub file: String,
    pub version: String,
    ast: AST,
}

impl Script {
    pub fn compile(engine: &Engine, path: &Path) -> Result<Script, ScriptError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ScriptError::whole_file(&file, format!("cannot read: {e}")))?;
        Script::compile_text(engine, &file, &text)
    }

    pub fn compile_text(engine: &Engine, file: &str, text: &str) -> Result<Script, ScriptError> {
        let mut ast = engine
            .compile(text)
            .map_err(|e| ScriptError::at(file, e.position(), strip_position(&e.to_string())))?;
        ast.set_source(file);
        Ok(Script {
            file: file.to_string(),
            version: content_hash(text.as_bytes()),
            ast,
        })
    }

    pub fn has_fn(&self, name: &str, arity: usize) -> bool {
        self.ast
            .iter_functions()
            .any(|f| f.name == name && f.params.len() == arity)
    }

    fn require(&self, name: &str, arity: usize) -> Result<(), ScriptError> {
        if self.has_fn(name, arity) {
            return Ok(());
        }
        let found = self
            .ast
            .iter_functions()
            .find(|f| f.name == name)
            .map(|f| format!(" (found it with {} parameters)", f.params.len()))
            .unwrap_or_default();
        Err(ScriptError::whole_file(
            &self.file,
            format!("required function {name}/{arity} is missing{found}"),
        ))
    }

    /// Calls a script function under the sandbox's limits and deadline. Top-level statements
    /// are never run: scripts hold function definitions only.
    pub fn call(
        &self,
        engine: &Engine,
        name: &str,
        args: impl rhai::FuncArgs,
    ) -> Result<Dynamic, ScriptError> {
        let mut scope = Scope::new();
        let options = CallFnOptions::new().eval_ast(false).rewind_scope(false);
        // Rhai panics (an `unreachable!` in its size checks) when a script puts a map that PIL
        // shares with it, such as the payment, inside an array or map. A script must never take
        // its worker down, so that becomes this call's error.
        let called = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            engine::with_deadline(|| {
                engine.call_fn_with_options::<Dynamic>(options, &mut scope, &self.ast, name, args)
            })
        }));
        match called {
            Ok(result) => result.map_err(|e| ScriptError::from_eval(&self.file, &e)),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("unknown");
                Err(ScriptError::whole_file(
                    &self.file,
                    format!(
                        "{name}: the script engine stopped ({what}); a known cause is putting \
                         the payment map itself (or another argument) inside an array or map: \
                         copy the fields you need instead"
                    ),
                ))
            }
        }
    }
}

pub fn content_hash(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..6])
}

/// An adapter: its configuration and its compiled mapping script.
#[derive(Debug)]
pub struct Adapter {
    pub config: AdapterConfig,
    pub script: Script,
    pub dir: PathBuf,
    /// `adapter.toml` `[settings]`, converted once and shared with every call.
    settings: Dynamic,
    /// `adapter.toml` `[secrets]`, likewise.
    secrets: HiddenSecrets,
}

/// Secret values as scripts get them; `Debug` never shows them.
struct HiddenSecrets(Dynamic);

impl std::fmt::Debug for HiddenSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HiddenSecrets(***)")
    }
}

impl Adapter {
    pub fn id(&self) -> &str {
        &self.config.id
    }
    pub fn can_query_status(&self) -> bool {
        self.script.has_fn("build_status_request", 2)
            && self.script.has_fn("parse_status_response", 2)
    }
    pub fn can_parse_callbacks(&self) -> bool {
        self.script.has_fn("parse_callback", 1)
    }
    /// Bulk sending is on: `capabilities.bulk_size` above 1 and both bulk functions defined
    /// (loading refuses one without the other).
    pub fn can_batch(&self) -> bool {
        self.config.capabilities.bulk_size > 1 && self.script.has_fn("build_batch_request", 2)
    }

    /// `ctx` for `build_request` and `build_status_request`: `#{now, settings, secrets,
    /// attempt, idempotency_key, callback_url}` (`idempotency_key` only when sending).
    pub fn request_ctx(
        &self,
        now: i64,
        attempt: i64,
        idempotency_key: Option<&str>,
        callback_url: Option<String>,
    ) -> Dynamic {
        let mut ctx = Map::new();
        ctx.insert("now".into(), Dynamic::from_int(now));
        ctx.insert("settings".into(), self.settings.clone());
        ctx.insert("secrets".into(), self.secrets.0.clone());
        ctx.insert("attempt".into(), Dynamic::from_int(attempt));
        if let Some(key) = idempotency_key {
            ctx.insert("idempotency_key".into(), key.into());
        }
        if let Some(url) = callback_url {
            ctx.insert("callback_url".into(), url.into());
        }
        convert::shared(ctx)
    }
}

/// Everything that routes and maps, loaded and checked together, swapped as one.
#[derive(Debug)]
pub struct Bundle {
    pub engine: Arc<Engine>,
    pub routing: Script,
    pub adapters: BTreeMap<String, Arc<Adapter>>,
}

/// All problems found while loading, each located.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct LoadErrors(pub Vec<ScriptError>);

impl Bundle {
    pub fn load(
        engine: Arc<Engine>,
        rules_dir: &Path,
        adapters_dir: &Path,
    ) -> Result<Bundle, LoadErrors> {
        let mut errors = Vec::new();
        let routing = match Script::compile(&engine, &rules_dir.join("routing.rhai")) {
            Ok(s) => match s.require("route", 2) {
                Ok(()) => Some(s),
                Err(e) => {
                    errors.push(e);
                    None
                }
            },
            Err(e) => {
                errors.push(e);
                None
            }
        };
        let mut adapters = BTreeMap::new();
        let mut dirs: Vec<PathBuf> = match std::fs::read_dir(adapters_dir) {
            Ok(rd) => rd
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect(),
            Err(e) => {
                errors.push(ScriptError::whole_file(
                    &adapters_dir.display().to_string(),
                    format!("cannot read adapters folder: {e}"),
                ));
                Vec::new()
            }
        };
        dirs.sort();
        for dir in dirs {
            match load_adapter(&engine, &dir) {
                Ok(adapter) => {
                    adapters.insert(adapter.config.id.clone(), Arc::new(adapter));
                }
                Err(mut errs) => errors.append(&mut errs),
            }
        }
        match routing {
            Some(routing) if errors.is_empty() => Ok(Bundle {
                engine,
                routing,
                adapters,
            }),
            _ => Err(LoadErrors(errors)),
        }
    }

    pub fn adapter(&self, id: &str) -> Option<&Arc<Adapter>> {
        self.adapters.get(id)
    }
}

fn load_adapter(engine: &Engine, dir: &Path) -> Result<Adapter, Vec<ScriptError>> {
    let mut errors = Vec::new();
    let config = AdapterConfig::load(&dir.join("adapter.toml"))
        .map_err(|e| errors.push(ScriptError::from_config(&e)))
        .ok();
    let script = Script::compile(engine, &dir.join("adapter.rhai"))
        .map_err(|e| errors.push(e))
        .ok();
    if let Some(script) = &script {
        for (name, arity) in [("build_request", 2), ("parse_response", 2)] {
            if let Err(e) = script.require(name, arity) {
                errors.push(e);
            }
        }
        let status_fns = [
            script.has_fn("build_status_request", 2),
            script.has_fn("parse_status_response", 2),
        ];
        if status_fns[0] != status_fns[1] {
            errors.push(ScriptError::whole_file(
                &script.file,
                "build_status_request/2 and parse_status_response/2 go together: define both or neither",
            ));
        }
        if script.has_fn("build_batch_request", 2) != script.has_fn("parse_batch_response", 2) {
            errors.push(ScriptError::whole_file(
                &script.file,
                "build_batch_request/2 and parse_batch_response/2 go together: define both or neither",
            ));
        }
    }
    if let (Some(config), Some(script)) = (&config, &script)
        && config.capabilities.bulk_size > 1
        && !script.has_fn("build_batch_request", 2)
    {
        errors.push(ScriptError::whole_file(
            &dir.join("adapter.toml").display().to_string(),
            format!(
                "capabilities.bulk_size is {} but {} defines no build_batch_request/2",
                config.capabilities.bulk_size, script.file
            ),
        ));
    }
    if let Some(config) = &config {
        let folder = dir.file_name().map(|n| n.to_string_lossy().to_string());
        if folder.as_deref() != Some(config.id.as_str()) {
            errors.push(ScriptError::whole_file(
                &dir.join("adapter.toml").display().to_string(),
                format!(
                    "id '{}' must equal the folder name '{}'",
                    config.id,
                    folder.unwrap_or_default()
                ),
            ));
        }
    }
    match (config, script) {
        (Some(config), Some(script)) if errors.is_empty() => Ok(Adapter {
            settings: convert::shared(
                convert::json_to_dynamic(&config.settings)
                    .try_cast::<Map>()
                    .unwrap_or_default(),
            ),
            secrets: HiddenSecrets(convert::shared(
                config
                    .script_secrets
                    .iter()
                    .map(|(k, v)| (k.as_str().into(), v.expose().into()))
                    .collect(),
            )),
            config,
            script,
            dir: dir.to_path_buf(),
        }),
        _ => Err(errors),
    }
}

/// Reads a field of a script result map as an optional string.
pub fn map_str(map: &Map, key: &str) -> Option<String> {
    map.get(key).filter(|v| !v.is_unit()).map(text_of)
}

/// A script value as text: strings copied as they are (without going through `Display`,
/// which this path used to pay for on every header and field), anything else displayed.
pub fn text_of(value: &Dynamic) -> String {
    match value.read_lock::<rhai::ImmutableString>() {
        Some(s) => s.as_str().to_owned(),
        None => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_errors_point_inside_the_function() {
        let engine = engine::build();
        let script = Script::compile_text(
            &engine,
            "rules/routing.rhai",
            "fn route(p, ctx) {\n  let x = 1;\n  x.no_such_method()\n}\n",
        )
        .expect("compile");
        let err = script
            .call(&engine, "route", (Dynamic::UNIT, Dynamic::UNIT))
            .unwrap_err();
        assert_eq!(err.file, "rules/routing.rhai");
        assert_eq!(err.line, 3, "{err}");
        assert!(err.column > 1, "{err}");
    }

    #[test]
    fn syntax_errors_have_line_and_column() {
        let engine = engine::build();
        let err = Script::compile_text(&engine, "x.rhai", "fn route(p, ctx) {\n  let = ;\n}\n")
            .unwrap_err();
        assert_eq!((err.file.as_str(), err.line), ("x.rhai", 2));
        assert!(err.to_string().starts_with("x.rhai:2:"), "{err}");
    }

    #[test]
    fn missing_function_is_reported() {
        let engine = engine::build();
        let s = Script::compile_text(&engine, "r.rhai", "fn route(p) { \"x\" }").expect("compile");
        let err = s.require("route", 2).unwrap_err();
        assert!(err.message.contains("route/2"), "{err}");
        assert!(err.message.contains("1 parameters"), "{err}");
    }
}
