//! What `load` and `parse` return when a configuration is not valid: every error at once, each
//! with the file, line and column it points at.

use std::fmt;

/// Every error found in one configuration file, in file order (by line, then column).
///
/// A TOML syntax error stops parsing, so it comes alone; a syntactically valid file reports all of
/// its semantic errors together. `Display` writes one line per error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", Lines(.errors))]
pub struct ConfigErrors {
    /// Never empty.
    pub errors: Vec<ConfigError>,
}

/// One thing wrong with a configuration file.
///
/// Displays as `origin:line:column: message`, for example
/// `sluice.toml:12:9: pools.chat.balance: unknown value "rand"; expected one of "round_robin",
/// "least_conn"`. The message starts with the dotted path of the key it is about (array elements
/// are numbered from 0: `routes[2].pool`), then says what is wrong and what is expected.
///
/// `line` and `column` are 1-based (the column counts characters, not bytes). An error about the
/// file as a whole (it cannot be read) has `line == 0 && column == 0` and displays as
/// `origin: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file name given to [`crate::parse`], or the path given to [`crate::load`].
    pub origin: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.origin, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.origin, self.line, self.column, self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> Self {
        ConfigErrors {
            errors: vec![error],
        }
    }
}

struct Lines<'a>(&'a [ConfigError]);

impl fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// Turns byte offsets into the text into 1-based line and column numbers.
pub(crate) struct Positions<'s> {
    text: &'s str,
    line_starts: Vec<usize>,
}

impl<'s> Positions<'s> {
    pub(crate) fn new(text: &'s str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Positions { text, line_starts }
    }

    /// 1-based (line, column) of a byte offset; the column counts characters. Offsets past the
    /// end, or inside a character, are moved back to the nearest valid position.
    pub(crate) fn of(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let start = self.line_starts.get(line - 1).copied().unwrap_or(0);
        let column = self
            .text
            .get(start..offset)
            .map_or(0, |s| s.chars().count());
        (line, column + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(line: usize, column: usize, message: &str) -> ConfigError {
        ConfigError {
            origin: "sluice.toml".into(),
            line,
            column,
            message: message.into(),
        }
    }

    #[test]
    fn display_is_origin_line_column_message() {
        let e = error(
            12,
            9,
            "pools.chat.balance: unknown value \"rand\"; expected one of \"round_robin\", \"least_conn\"",
        );
        assert_eq!(
            e.to_string(),
            "sluice.toml:12:9: pools.chat.balance: unknown value \"rand\"; expected one of \"round_robin\", \"least_conn\""
        );
    }

    #[test]
    fn whole_file_errors_have_no_position() {
        let e = error(0, 0, "cannot read file: permission denied");
        assert_eq!(
            e.to_string(),
            "sluice.toml: cannot read file: permission denied"
        );
    }

    #[test]
    fn errors_display_one_line_each() {
        let errors = ConfigErrors {
            errors: vec![error(1, 1, "a: first"), error(3, 5, "b: second")],
        };
        assert_eq!(
            errors.to_string(),
            "sluice.toml:1:1: a: first\nsluice.toml:3:5: b: second"
        );
    }

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let text = "ab\nçé = 1\r\n\nx";
        let p = Positions::new(text);
        assert_eq!(p.of(0), (1, 1));
        assert_eq!(p.of(2), (1, 3)); // the newline itself
        assert_eq!(p.of(3), (2, 1));
        assert_eq!(p.of(7), (2, 3)); // after two 2-byte characters
        assert_eq!(p.of(4), (2, 1)); // inside 'ç': moved back to its start
        assert_eq!(p.of(text.len() - 1), (4, 1));
        assert_eq!(p.of(text.len() + 10), (4, 2));
        assert_eq!(Positions::new("").of(0), (1, 1));
    }
}
