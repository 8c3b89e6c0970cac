//! (in progress) the `kafka` publisher.
