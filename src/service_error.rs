//! (in progress) the `ServiceError` taxonomy.
