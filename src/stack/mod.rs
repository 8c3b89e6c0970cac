//! (in progress) the `stack` feature: one stack from config.
