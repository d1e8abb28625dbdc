//! Progress events keyed by (VM, disk position, phase), emitted through one trait.
