//! What the benchmarks share: the load generator (`load`), the processes under test
//! (`procs`) and the statistics (`stats`). Each benchmark is a binary of `src/bin/`.

pub mod load;
pub mod procs;
pub mod stats;
