//! Helpers shared by the tests of the pool-level modules (balancing, health).

use crate::model::{Config, Pool};
use crate::parse;

/// A valid file whose pool `main` has `lines` before its backends (line 10 is the first of
/// `lines`).
pub(crate) fn file(lines: &str) -> String {
    format!(
        "[[listeners]]\nname = \"public\"\nlisten = \"127.0.0.1:8080\"\n\n[[routes]]\n\
         listener = \"public\"\npool = \"main\"\n\n[pools.main]\n{lines}\
         backends = [\"127.0.0.1:9001\"]\n"
    )
}

pub(crate) fn pool(lines: &str) -> Pool {
    match parse(&file(lines), "t.toml") {
        Ok(config) => config.pools[0].clone(),
        Err(e) => panic!("expected a valid pool, got:\n{e}"),
    }
}

pub(crate) fn errors(lines: &str) -> Vec<String> {
    match parse(&file(lines), "t.toml") {
        Ok(_) => panic!("expected errors from:\n{lines}"),
        Err(e) => e.errors.iter().map(ToString::to_string).collect(),
    }
}

pub(crate) fn error(lines: &str) -> String {
    let errors = errors(lines);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    errors.into_iter().next().unwrap_or_default()
}

/// `config/sluice.toml` with the commented-out lines starting with `keys` uncommented (each must
/// be there) and the lines starting with `drop` removed, parsed.
pub(crate) fn example_uncommented(keys: &[&str], drop: &[&str]) -> Config {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/sluice.toml");
    let text = std::fs::read_to_string(&path).expect("config/sluice.toml");
    let mut uncommented = 0;
    let text: String = text
        .lines()
        .filter(|line| !drop.iter().any(|d| line.starts_with(d)))
        .map(|line| {
            if keys.iter().any(|k| line.starts_with(k)) {
                uncommented += 1;
                format!("{}\n", line.get(2..).unwrap_or_default())
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    assert_eq!(
        uncommented,
        keys.len(),
        "every key is shown in config/sluice.toml"
    );
    match parse(&text, "sluice.toml") {
        Ok(config) => config,
        Err(e) => panic!("uncommented config/sluice.toml does not parse:\n{e}"),
    }
}
