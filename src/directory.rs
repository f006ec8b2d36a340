//! The payee directory: `(id_type, id_value)` → financial address + attributes, for senders
//! that name payees by an identifier (the legacy PIL API's ACCOUNT_ID, PHONE, a registry id...)
//! rather than a financial address. It owns CSV import and lookup; it never routes.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use utoipa::ToSchema;

use crate::address::FinancialAddress;
use crate::store::{DirectoryEntry, Store, StoreError};

/// Identifier types compare case-insensitively (`phone` = `PHONE`); values are exact.
pub fn normalize_type(id_type: &str) -> String {
    id_type.trim().to_ascii_uppercase()
}

/// A problem with one CSV row (`line` counts from 1, the header being line 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct RowError {
    pub line: u64,
    pub field: String,
    pub code: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{} bad row(s); nothing was imported", .0.len())]
    Rows(Vec<RowError>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Parses a directory CSV: a header `id_type,id_value,fa` then any attribute columns. Every
/// bad row is reported; one bad row means nothing is imported.
pub fn parse_csv(data: &[u8]) -> Result<Vec<DirectoryEntry>, Vec<RowError>> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(false)
        .from_reader(data);
    let row_error = |line: u64, field: &str, code: &str, message: String| RowError {
        line,
        field: field.into(),
        code: code.into(),
        message,
    };
    let headers: Vec<String> = match reader.headers() {
        Ok(h) => h.iter().map(str::to_string).collect(),
        Err(e) => return Err(vec![row_error(1, "", "csv.invalid", e.to_string())]),
    };
    if headers.len() < 3
        || headers[0] != "id_type"
        || headers[1] != "id_value"
        || headers[2] != "fa"
    {
        return Err(vec![row_error(
            1,
            "",
            "header.invalid",
            format!(
                "the header must start with id_type,id_value,fa (then attribute columns); got {}",
                headers.join(",")
            ),
        )]);
    }
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    let mut seen: HashSet<(String, String)> = HashSet::new();
    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                errors.push(row_error(line, "", "csv.invalid", e.to_string()));
                continue;
            }
        };
        let line = record.position().map_or(0, |p| p.line());
        let before = errors.len();
        let id_type = normalize_type(&record[0]);
        let id_value = record[1].to_string();
        let fa = record[2].to_string();
        if id_type.is_empty() {
            errors.push(row_error(
                line,
                "id_type",
                "id_type.missing",
                "id_type is empty".into(),
            ));
        }
        if id_value.is_empty() {
            errors.push(row_error(
                line,
                "id_value",
                "id_value.missing",
                "id_value is empty".into(),
            ));
        }
        if let Err(e) = FinancialAddress::parse(&fa) {
            errors.push(row_error(line, "fa", e.reason_code(), e.to_string()));
        }
        if errors.len() == before && !seen.insert((id_type.clone(), id_value.clone())) {
            errors.push(row_error(
                line,
                "id_value",
                "id.duplicate",
                format!("{id_type} {id_value} appears more than once in this file"),
            ));
        }
        if errors.len() == before {
            let attributes = headers[3..]
                .iter()
                .zip(record.iter().skip(3))
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.to_string())))
                .collect();
            entries.push(DirectoryEntry {
                id_type,
                id_value,
                fa,
                attributes,
            });
        }
    }
    if errors.is_empty() {
        Ok(entries)
    } else {
        Err(errors)
    }
}

/// Parses and stores a directory CSV, all or nothing. Returns how many rows were written.
pub async fn import(store: &dyn Store, data: &[u8], now: i64) -> Result<u64, ImportError> {
    let entries = parse_csv(data).map_err(ImportError::Rows)?;
    Ok(store.directory_upsert(&entries, now).await?)
}

/// Looks up many payees at once, keyed by `(normalized id_type, id_value)`.
pub async fn resolve(
    store: &dyn Store,
    keys: &[(String, String)],
) -> Result<HashMap<(String, String), DirectoryEntry>, StoreError> {
    let keys: Vec<(String, String)> = keys
        .iter()
        .map(|(t, v)| (normalize_type(t), v.clone()))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    Ok(store
        .directory_lookup(&keys)
        .await?
        .into_iter()
        .map(|e| ((e.id_type.clone(), e.id_value.clone()), e))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_with_attributes_parse() {
        let csv = "id_type,id_value,fa,region,preferred_dfsp\n\
                   phone,256700000001,mobile:256700000001@mtn,north,\n\
                   ACCOUNT_ID,ACC-9,account:ACC-9@mojaloop,south,mojaloop-sdk\n";
        let rows = parse_csv(csv.as_bytes()).expect("valid");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].id_type, "PHONE");
        assert_eq!(
            rows[0].attributes.len(),
            1,
            "empty cells are not attributes"
        );
        assert_eq!(rows[1].attributes["preferred_dfsp"], "mojaloop-sdk");
    }

    #[test]
    fn every_bad_row_is_reported_with_its_line() {
        let csv = "id_type,id_value,fa\n\
                   PHONE,1,mobile:1@mtn\n\
                   ,2,mobile:2@mtn\n\
                   PHONE,3,not-an-address\n\
                   PHONE,1,mobile:1@mtn\n";
        let errors = parse_csv(csv.as_bytes()).expect_err("invalid");
        let lines: Vec<(u64, &str)> = errors.iter().map(|e| (e.line, e.code.as_str())).collect();
        assert_eq!(lines[0], (3, "id_type.missing"));
        assert_eq!(lines[1].0, 4);
        assert!(lines[1].1.starts_with("payee_fa"), "{lines:?}");
        assert_eq!(lines[2], (5, "id.duplicate"));
    }

    #[test]
    fn a_wrong_header_is_refused() {
        let errors = parse_csv(b"type,value,fa\nPHONE,1,mobile:1@mtn\n").expect_err("header");
        assert_eq!(errors[0].code, "header.invalid");
    }
}
