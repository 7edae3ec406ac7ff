//! Nothing but its tokio dependency: see Cargo.toml.
