//! (in progress) the `mqtt` publisher.
