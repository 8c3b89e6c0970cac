//! (in progress) health and readiness reporting.
