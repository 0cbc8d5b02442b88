//! The one error type of the L4 act.

use std::io;

use crate::Side;

/// An I/O failure that ended a tunnel, with the side whose socket failed.
///
/// Reported in [`crate::RelayReport::error`]; [`crate::CloseReason::Error`] carries its side and
/// kind for metrics.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Reading from a side failed (typically `ConnectionReset`).
    #[error("reading from the {side} failed: {source}")]
    Read {
        /// The side read from.
        side: Side,
        /// The OS error.
        source: io::Error,
    },
    /// Writing to a side failed (typically `BrokenPipe` or `ConnectionReset`).
    #[error("writing to the {side} failed: {source}")]
    Write {
        /// The side written to.
        side: Side,
        /// The OS error.
        source: io::Error,
    },
    /// Passing end of stream on to a side (`shutdown(SHUT_WR)`, or a TLS close) failed.
    #[error("closing the write half of the {side} failed: {source}")]
    Shutdown {
        /// The side being shut down.
        side: Side,
        /// The OS error.
        source: io::Error,
    },
}

impl RelayError {
    /// The side whose socket failed.
    pub fn side(&self) -> Side {
        match self {
            Self::Read { side, .. } | Self::Write { side, .. } | Self::Shutdown { side, .. } => {
                *side
            }
        }
    }

    /// The kind of the underlying I/O error.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            Self::Read { source, .. }
            | Self::Write { source, .. }
            | Self::Shutdown { source, .. } => source.kind(),
        }
    }

    /// A fixed label for logs and metrics: `"read"`, `"write"` or `"shutdown"`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Read { .. } => "read",
            Self::Write { .. } => "write",
            Self::Shutdown { .. } => "shutdown",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_names_its_side_kind_and_label() {
        let reset = || io::Error::from(io::ErrorKind::ConnectionReset);
        let cases = [
            (
                RelayError::Read {
                    side: Side::Client,
                    source: reset(),
                },
                Side::Client,
                "read",
            ),
            (
                RelayError::Write {
                    side: Side::Backend,
                    source: reset(),
                },
                Side::Backend,
                "write",
            ),
            (
                RelayError::Shutdown {
                    side: Side::Client,
                    source: reset(),
                },
                Side::Client,
                "shutdown",
            ),
        ];
        for (error, side, label) in cases {
            assert_eq!(error.side(), side);
            assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
            assert_eq!(error.label(), label);
            assert!(error.to_string().contains(side.label()), "{error}");
        }
    }
}
