//! Helpers shared by the tests of the pool-level modules (balancing, health).

use crate::model::Pool;
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
