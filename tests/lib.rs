//! End-to-end suite; the tests live in `tests/tests/`.
