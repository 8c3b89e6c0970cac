//! (in progress) the `publish` feature.
