//! RabbitMQ publisher (in progress).
