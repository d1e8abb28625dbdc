//! Tags of a restore point changed after the fact (see [`Repository::set_tags`]).

use crate::repository::Repository;
use crate::select::{self, SelectError};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct TagChange {
    /// The whole id of the restore point.
    pub id: String,
    /// Its tags now.
    pub tags: Vec<String>,
}

/// Adds `add` and removes `remove` from the tags of the restore point `wanted` names (an
/// id, a unique prefix or `latest`). A tag in both lists ends up present.
pub async fn change_tags(
    repo: &Repository,
    wanted: &str,
    add: &[String],
    remove: &[String],
) -> Result<TagChange, SelectError> {
    let point = select::restore_point(repo, wanted, None).await?;
    let mut tags: Vec<String> = point.tags.iter().filter(|t| !remove.contains(t)).cloned().collect();
    for t in add {
        if !tags.contains(t) {
            tags.push(t.clone());
        }
    }
    repo.set_tags(&point.id, &tags).await?;
    Ok(TagChange { id: point.id, tags })
}
