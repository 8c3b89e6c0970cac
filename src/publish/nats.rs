//! NATS JetStream publisher (in progress).
