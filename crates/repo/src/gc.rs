//! Garbage collection (placeholder while being written).

use serde::{Deserialize, Serialize};

/// One gc generation: packs found unreferenced at `time`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Condemned {
    pub time: chrono::DateTime<chrono::Utc>,
    pub packs: Vec<String>,
}
