//! Live activity (in progress).
