//! (in progress) the `jwt` feature.
