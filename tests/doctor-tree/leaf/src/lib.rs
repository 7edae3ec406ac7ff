//! Part of doctor --cargo's test tree; no code.
