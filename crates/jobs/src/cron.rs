//! A schedule's cron line read in its IANA time zone. Across daylight-saving changes it
//! follows what cron users expect (the Open Cron Pattern Specification, as croner does):
//! a fixed-time job whose time falls in the spring gap runs at the first instant after it,
//! one whose time is repeated in autumn runs once, and interval jobs (`*/5`) keep their
//! rhythm on the real time line.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;

use crate::error::Error;

#[derive(Debug, Clone)]
pub struct CronSchedule {
    cron: Cron,
    zone: Tz,
}

impl CronSchedule {
    pub fn parse(line: &str, timezone: &str) -> Result<Self, Error> {
        let cron = Cron::from_str(line.trim()).map_err(|e| Error::InvalidJob(format!("cron line {line:?}: {e}")))?;
        let zone = Tz::from_str(timezone).map_err(|_| {
            Error::InvalidJob(format!("unknown time zone {timezone:?} (an IANA name such as Europe/Berlin)"))
        })?;
        Ok(CronSchedule { cron, zone })
    }

    /// The line in English words (croner's reading), e.g. "At 02:00." or "At every 5 minutes.".
    pub fn describe(&self) -> String {
        self.cron.describe()
    }

    /// The first instant strictly after `after` the schedule fires at.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.zone);
        self.cron.find_next_occurrence(&local, false).ok().map(|t| t.with_timezone(&Utc))
    }

    /// The last instant at or before `at` the schedule fired at.
    pub fn latest_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = at.with_timezone(&self.zone);
        self.cron.find_previous_occurrence(&local, true).ok().map(|t| t.with_timezone(&Utc))
    }
}
