//! The event store (in progress).
