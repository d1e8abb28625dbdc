//! Job definitions: the whole [`Job`] as JSON, with the columns the catalog looks jobs up
//! by (name, kind, enabled, pool, repository) beside it.

use xenvault_jobs::model::Job;

use crate::db::{Row, params};
use crate::error::{Error, Result};
use crate::{Catalog, enum_text, now, to_json};

fn job_row(row: &Row) -> Result<Job> {
    row.json(0)
}

/// Gives the job's schedules without an id one, unique within the job.
fn assign_schedule_ids(job: &mut Job) {
    for schedule in job.schedules.iter_mut().filter(|s| s.id.is_empty()) {
        schedule.id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    }
}

fn check_schedule_ids(job: &Job) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    match job.schedules.iter().find(|s| !seen.insert(s.id.as_str())) {
        Some(twice) => Err(Error::Invalid(format!("job {:?}: two schedules have the id {:?}", job.name, twice.id))),
        None => Ok(()),
    }
}

impl Catalog {
    /// Stores a new job; gives it an id (when it has none) and its schedules ids.
    /// Returns the job as stored.
    pub async fn create_job(&self, mut job: Job) -> Result<Job> {
        if job.name.trim().is_empty() {
            return Err(Error::Invalid("a job needs a name".into()));
        }
        if job.id.is_empty() {
            job.id = uuid::Uuid::new_v4().to_string();
        }
        assign_schedule_ids(&mut job);
        check_schedule_ids(&job)?;
        let at = now();
        let mut tx = self.db.begin().await?;
        // LIMIT 1: one job may have the id and another the name.
        let taken =
            tx.query_opt("SELECT id FROM jobs WHERE id = $1 OR name = $2 LIMIT 1", params![&job.id, &job.name]).await?;
        if taken.is_some() {
            return Err(Error::Conflict(format!("a job named {:?} (or with id {}) already exists", job.name, job.id)));
        }
        tx.execute(
            "INSERT INTO jobs (id, name, kind, enabled, pool, repository, definition, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
            params![
                &job.id,
                &job.name,
                enum_text(&job.kind)?,
                job.enabled,
                &job.pool,
                &job.repository,
                to_json(&job)?,
                at
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(job)
    }

    /// Replaces the job with the same id; new schedules get ids.
    pub async fn update_job(&self, mut job: Job) -> Result<Job> {
        assign_schedule_ids(&mut job);
        check_schedule_ids(&job)?;
        let mut tx = self.db.begin().await?;
        let taken =
            tx.query_opt("SELECT id FROM jobs WHERE name = $1 AND id <> $2", params![&job.name, &job.id]).await?;
        if taken.is_some() {
            return Err(Error::Conflict(format!("another job is named {:?}", job.name)));
        }
        let changed = tx
            .execute(
                "UPDATE jobs SET name = $2, kind = $3, enabled = $4, pool = $5, repository = $6, definition = $7,
                 updated_at = $8 WHERE id = $1",
                params![
                    &job.id,
                    &job.name,
                    enum_text(&job.kind)?,
                    job.enabled,
                    &job.pool,
                    &job.repository,
                    to_json(&job)?,
                    now()
                ],
            )
            .await?;
        if changed == 0 {
            return Err(Error::NotFound { what: "job", id: job.id });
        }
        tx.commit().await?;
        Ok(job)
    }

    pub async fn set_job_enabled(&self, id: &str, enabled: bool) -> Result<Job> {
        let mut job = self.job(id).await?;
        job.enabled = enabled;
        self.update_job(job).await
    }

    pub async fn job(&self, id: &str) -> Result<Job> {
        let row = self.db.query_opt("SELECT definition FROM jobs WHERE id = $1", params![id]).await?;
        job_row(&row.ok_or_else(|| Error::NotFound { what: "job", id: id.to_string() })?)
    }

    pub async fn job_by_name(&self, name: &str) -> Result<Job> {
        let row = self.db.query_opt("SELECT definition FROM jobs WHERE name = $1", params![name]).await?;
        job_row(&row.ok_or_else(|| Error::NotFound { what: "job", id: name.to_string() })?)
    }

    pub async fn jobs(&self) -> Result<Vec<Job>> {
        let rows = self.db.query("SELECT definition FROM jobs ORDER BY name", params![]).await?;
        rows.iter().map(job_row).collect()
    }

    /// Removes the definition; its runs stay in the history. Refused while a sequence
    /// names the job.
    pub async fn delete_job(&self, id: &str) -> Result<()> {
        let sequences: Vec<String> = self
            .jobs()
            .await?
            .into_iter()
            .filter(|j| j.sequence.as_ref().is_some_and(|s| s.jobs.iter().any(|member| member == id)))
            .map(|j| j.name)
            .collect();
        if !sequences.is_empty() {
            return Err(Error::Conflict(format!("job {id} is part of the sequences {}", sequences.join(", "))));
        }
        if self.db.execute("DELETE FROM jobs WHERE id = $1", params![id]).await? == 0 {
            return Err(Error::NotFound { what: "job", id: id.to_string() });
        }
        Ok(())
    }
}
