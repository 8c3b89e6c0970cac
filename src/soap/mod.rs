//! (in progress) the `soap` feature.
