//! (in progress) the `correlation` feature.
