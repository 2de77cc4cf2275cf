//! Rebuilds when a migration is added: `sqlx::migrate!` embeds the
//! migrations at compile time but only notices edits to files it already saw.

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
