//! (in progress) the `discovery` feature.
