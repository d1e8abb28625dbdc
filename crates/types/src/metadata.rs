//! The VM metadata stored with each restore point (written by the engine, read by restore).
