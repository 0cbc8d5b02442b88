//! sluice configuration: TOML text in, a validated, typed, immutable [`Config`] out, or every
//! error at once.
//!
//! Place in the pipeline: before all of it. The binary calls [`load`] at start-up and on every
//! reload (SIGHUP); the proxy builds its routing snapshot from the [`Config`] and never looks at
//! the text. A reload that fails here keeps the old snapshot, so [`ConfigErrors`] lists *every*
//! problem of the file, each with its line and column, rather than the first.
//!
//! How (STYLE rule 6, "parsed, not validated"): the text is parsed into a spanned TOML document,
//! then walked table by table (`file.rs`) with small typed readers (`read.rs`) that convert each
//! key into its typed value (`SocketAddr`, `Duration`, compiled host and path matchers, enums),
//! apply the defaults of [`defaults`], report unknown keys (with a "did you mean" hint), and
//! carry on after an error. Rules spanning several tables (duplicate names and addresses, routes
//! naming listeners and pools) are checked in the same pass. The format is documented in
//! `docs/configuration.md`; `config/sluice.toml` shows every key.
//!
//! What this crate does not do: I/O beyond reading the one file, resolving DNS names, binding
//! sockets, or deciding the values derived at start-up (`max_connections` from the open-file
//! limit).

#![forbid(unsafe_code)]

mod admin;
mod balancing;
pub mod defaults;
mod error;
mod file;
mod health;
mod matchers;
pub mod model;
mod read;
mod summary;
#[cfg(test)]
mod test_support;
mod upstream;

use std::path::Path;

pub use error::{ConfigError, ConfigErrors};
pub use model::*;

/// Reads and parses the file at `path`. Messages name the file as `path` was given.
///
/// A file that cannot be read, or is not UTF-8, is one error naming it.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let origin = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| ConfigError {
        origin: origin.clone(),
        line: 0,
        column: 0,
        message: format!("cannot read the configuration file: {e}"),
    })?;
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let bytes = e.as_bytes();
            let text = String::from_utf8_lossy(bytes.get(..valid).unwrap_or_default());
            let (line, column) = error::Positions::new(&text).of(valid);
            return Err(ConfigError {
                origin,
                line,
                column,
                message: "the file is not valid UTF-8".into(),
            }
            .into());
        }
    };
    parse(&text, &origin)
}

/// Parses configuration text. `origin` names it in messages (usually the file name).
///
/// A TOML syntax error stops parsing and is returned alone; otherwise every semantic error of
/// the file is returned, in file order.
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigErrors> {
    let mut reader = read::Reader::new(origin, text);
    let document = match toml::de::DeTable::parse(text) {
        Ok(document) => document,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let mut message = format!("invalid TOML: {}", e.message().replace('\n', "; "));
            if e.message() == "duplicate key" {
                if let Some(key) = text.get(span.clone()).filter(|k| !k.is_empty()) {
                    message.push_str(&format!(" `{key}`: a key or table may appear only once"));
                }
            }
            reader.error(span, message);
            return Err(ConfigErrors {
                errors: reader.into_errors(),
            });
        }
    };
    let root = toml::Spanned::new(
        document.span(),
        toml::de::DeValue::Table(document.into_inner()),
    );
    let config = file::config(&mut reader, &root);
    let errors = reader.into_errors();
    match config {
        Some(config) if errors.is_empty() => Ok(config),
        _ => {
            // Every reader that returns `None` has reported why.
            debug_assert!(!errors.is_empty(), "no config and no error");
            Err(ConfigErrors { errors })
        }
    }
}

#[cfg(test)]
mod tests;
