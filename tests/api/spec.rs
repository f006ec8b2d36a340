//! Test support: validate JSON values against the schemas of an OpenAPI 3.0 YAML spec file, so
//! tests check requests and responses against the real spec instead of hand-copied schemas.
//!
//! How a spec becomes a JSON Schema validator:
//! - The YAML is parsed into a `serde_json::Value` (serde_yaml_ng). Numbers stay numbers, also
//!   with serde_json's `arbitrary_precision`, which is why jsonschema's `arbitrary-precision`
//!   feature is on: integers beyond u64 still count as integers.
//! - Draft 4 is used: OpenAPI 3.0 schemas are based on it (`exclusiveMinimum: true` is a boolean,
//!   keywords beside a `$ref` are ignored, as 3.0 says).
//! - `$ref`s are not rewritten: the root document of each validator is the whole spec with a
//!   top-level `{"$ref": "#<pointer>"}` added. Under draft 4 that `$ref` replaces the rest of the
//!   root for validation, while every `#/components/...` (or any other in-document) pointer still
//!   resolves. References to other files or URLs are not supported and fail with a panic.
//! - OpenAPI-only keywords are translated or removed once at load (see [`normalize`]):
//!   `nullable: true` becomes "null is also allowed"; `example`, `examples`, `discriminator`,
//!   `xml` and `externalDocs` are dropped. Draft 4 would ignore them anyway; dropping them keeps
//!   example data (G2P Connect even has a `$ref` inside an `example`) out of reference handling.
//!   Property names are never mistaken for keywords.
//! - `format` is not validated at all (unknown formats therefore cannot fail): G2P Connect uses
//!   `format` to hold a regex, and OpenAPI formats such as `int32` or `binary` are only hints.
//! - Validators are compiled on first use for each (pointer, ignored-required) pair and cached.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use jsonschema::error::ValidationErrorKind;
use jsonschema::{ValidationError, Validator};
use serde_json::{Map, Value, json};

/// A parsed OpenAPI 3.0 spec whose schemas can validate JSON instances.
pub struct Spec {
    /// The spec file, named in every panic.
    source: String,
    /// The whole spec, already made draft-4 compatible by [`normalize`].
    doc: Value,
    cache: Mutex<HashMap<CacheKey, Arc<Validator>>>,
}

/// A JSON pointer into the spec and the sorted `ignore_required` names.
type CacheKey = (String, Vec<String>);

impl Spec {
    /// Reads and parses `path`. Panics, naming the file, when it cannot be read, is not YAML,
    /// is not OpenAPI 3.0.x or has no `components/schemas`.
    pub fn load(path: &Path) -> Spec {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("spec {source}: cannot read: {e}"));
        let mut doc: Value = serde_yaml_ng::from_str(&text)
            .unwrap_or_else(|e| panic!("spec {source}: not parsable as YAML into JSON: {e}"));
        let version = doc["openapi"].as_str().unwrap_or("<none>");
        assert!(
            version.starts_with("3.0."),
            "spec {source}: openapi is {version:?}, not 3.0.x"
        );
        let has_schemas = doc["components"]["schemas"].is_object();
        assert!(has_schemas, "spec {source}: has no components/schemas map");
        normalize(&mut doc, false);
        Spec {
            source,
            doc,
            cache: Mutex::default(),
        }
    }

    /// Names of all `#/components/schemas/*`, sorted.
    pub fn schema_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.doc["components"]["schemas"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Validates `instance` against `#/components/schemas/<name>`. `Err` lists every error as
    /// `"<instance path>: <message>"` (the root is `/`); the failing branches of an
    /// `anyOf`/`oneOf` follow it on their own lines, ending in `[anyOf branch N]`. Identical
    /// lines are listed once (a property required both in an `allOf` part and beside it).
    /// Panics if there is no such schema or it does not compile.
    pub fn validate(&self, name: &str, instance: &Value) -> Result<(), Vec<String>> {
        self.validate_at(&schema_pointer(name), instance, &[])
    }

    /// Like [`Spec::validate`], but first removes the property names in `ignore_required` from
    /// every `required` list of the spec (the named schema and everything it references).
    /// Only for specs whose own typos make a schema unsatisfiable, e.g. G2P Connect's
    /// `DisburseRequest` requires `disburemsents` (the property is `disbursements`), so no
    /// correct request could pass. The misspelt name is unique, so dropping it everywhere drops
    /// exactly the typo; the rest of the schema is still checked.
    pub fn validate_tolerant(
        &self,
        name: &str,
        instance: &Value,
        ignore_required: &[&str],
    ) -> Result<(), Vec<String>> {
        self.validate_at(&schema_pointer(name), instance, ignore_required)
    }

    /// Validates against the schema at any JSON pointer into the spec (RFC 6901, `/` in a key
    /// written `~1`), for inline schemas that are not components, e.g. a request envelope
    /// `/paths/~1disburse/post/requestBody/content/application~1json/schema` or an
    /// acknowledgement `/components/responses/Response/content/application~1json/schema`.
    /// `ignore_required` works as in [`Spec::validate_tolerant`]; pass `&[]` for none.
    pub fn validate_at(
        &self,
        pointer: &str,
        instance: &Value,
        ignore_required: &[&str],
    ) -> Result<(), Vec<String>> {
        let validator = self.validator(pointer, ignore_required);
        let mut errors = Vec::new();
        for error in validator.iter_errors(instance) {
            push_error(&error, "", &mut errors);
        }
        errors.is_empty().then_some(()).ok_or(errors)
    }

    fn validator(&self, pointer: &str, ignore_required: &[&str]) -> Arc<Validator> {
        let mut ignored: Vec<String> = ignore_required.iter().map(|s| s.to_string()).collect();
        ignored.sort();
        let key = (pointer.to_string(), ignored);
        // A panic while compiling poisons the lock; the map itself is still consistent.
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = cache.get(&key) {
            return Arc::clone(v);
        }
        let source = &self.source;
        let found = self.doc.pointer(pointer).is_some();
        assert!(found, "spec {source}: nothing at JSON pointer {pointer:?}");
        let mut root = self.doc.clone();
        if !ignore_required.is_empty() {
            drop_required(&mut root, ignore_required);
        }
        root["$ref"] = json!(format!("#{}", encode_fragment(pointer))); // root is a map: see load
        let validator = Arc::new(
            jsonschema::draft4::options()
                .should_validate_formats(false)
                .should_ignore_unknown_formats(true)
                .build(&root)
                .unwrap_or_else(|e| {
                    panic!("spec {source}: schema at {pointer:?} does not compile: {e}")
                }),
        );
        cache.insert(key, Arc::clone(&validator));
        validator
    }
}

/// `#/components/schemas/<name>` as a JSON pointer (RFC 6901 escapes).
fn schema_pointer(name: &str) -> String {
    let name = name.replace('~', "~0").replace('/', "~1");
    format!("/components/schemas/{name}")
}

/// Percent-encodes what a URI fragment may not hold as is (e.g. `{id}` in a path template).
fn encode_fragment(pointer: &str) -> String {
    const KEEP: &[u8] = b"-._~!$&'()*+,;=:@/";
    let plain = |b: u8| (b.is_ascii_alphanumeric() || KEEP.contains(&b)).then(|| char::from(b));
    let encode = |b: u8| plain(b).map_or_else(|| format!("%{b:02X}"), String::from);
    pointer.bytes().map(encode).collect()
}

/// One line per error, then (for `anyOf`/`oneOf` with no match) the errors of each branch.
/// A line already listed is skipped.
fn push_error(error: &ValidationError, suffix: &str, out: &mut Vec<String>) {
    let path = error.instance_path().as_str();
    let path = if path.is_empty() { "/" } else { path };
    let line = format!("{path}: {error}{suffix}");
    if !out.contains(&line) {
        out.push(line);
    }
    let (keyword, branches) = match error.kind() {
        ValidationErrorKind::AnyOf { context } => ("anyOf", context),
        ValidationErrorKind::OneOfNotValid { context } => ("oneOf", context),
        _ => return,
    };
    for (i, branch) in branches.iter().enumerate() {
        for sub in branch {
            push_error(sub, &format!(" [{keyword} branch {i}]{suffix}"), out);
        }
    }
}

/// Keywords that only document (or serve code generators); they never constrain an instance.
const DOC_ONLY: [&str; 5] = [
    "example",
    "examples",
    "discriminator",
    "xml",
    "externalDocs",
];

/// OpenAPI 3.0 → JSON Schema draft 4, in place. `names` is true for maps whose keys are names
/// chosen by the spec author (`properties`, `patternProperties`, `components/schemas`), so a
/// property called `example` or `nullable` is kept. Values of `enum`/`default` are data and
/// left alone.
fn normalize(value: &mut Value, names: bool) {
    match value {
        Value::Object(map) => {
            if !names {
                for keyword in DOC_ONLY {
                    map.remove(keyword);
                }
                if map.remove("nullable") == Some(Value::Bool(true)) {
                    allow_null(map);
                }
            }
            for (key, child) in map.iter_mut() {
                if !names && matches!(key.as_str(), "enum" | "default") {
                    continue;
                }
                let child_names = !names
                    && matches!(key.as_str(), "properties" | "patternProperties" | "schemas");
                normalize(child, child_names);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| normalize(v, false)),
        _ => {}
    }
}

/// `nullable: true`: a plain `type: X` becomes `type: [X, "null"]` (and `null` joins any
/// `enum`); a schema built from `$ref`/`allOf`/`anyOf`/`oneOf`/`not` is wrapped as
/// `anyOf: [{type: null}, <schema>]`, since null would fail those sub-schemas.
fn allow_null(map: &mut Map<String, Value>) {
    let composed = ["$ref", "allOf", "anyOf", "oneOf", "not"]
        .iter()
        .any(|k| map.contains_key(*k));
    match map.get("type").and_then(Value::as_str) {
        Some(t) if !composed => {
            let t = t.to_string();
            map.insert("type".into(), json!([t, "null"]));
            if let Some(Value::Array(values)) = map.get_mut("enum")
                && !values.contains(&Value::Null)
            {
                values.push(Value::Null);
            }
        }
        _ => {
            let inner = std::mem::take(map);
            map.insert(
                "anyOf".into(),
                json!([{ "type": "null" }, Value::Object(inner)]),
            );
        }
    }
}

/// Removes `names` from every `required` list in the document (an emptied list is removed:
/// draft 4 wants at least one entry).
fn drop_required(value: &mut Value, names: &[&str]) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Array(required)) = map.get_mut("required") {
                required.retain(|r| !r.as_str().is_some_and(|r| names.contains(&r)));
                if required.is_empty() {
                    map.remove("required");
                }
            }
            map.values_mut().for_each(|v| drop_required(v, names));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| drop_required(v, names)),
        _ => {}
    }
}
