//! (in progress) the `redis` publisher.
