//! Stream reconstruction (in progress).
