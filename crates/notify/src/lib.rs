//! Tells people how a job's run went: an email report (SMTP, STARTTLS by default; text and
//! HTML in one message) to the job's addresses and a JSON POST to its webhook, as the job's
//! `notifications.when` asks. Failures to notify never fail the run: each attempt comes
//! back as a [`Delivery`] the caller records.

mod email;
mod report;
mod webhook;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use xenvault_jobs::model::{Job, NotifyWhen, Run, RunStatus, Task};

pub use report::{Report, VmSummary};

/// The SMTP server reports are sent through (the server's configuration).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    /// The sender, e.g. `xenvault <backup@example.com>`.
    pub from: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub security: SmtpSecurity,
    /// PEM CA certificates the server's certificate must chain to, instead of the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate (still encrypted, not authenticated): tests only.
    #[serde(default)]
    pub accept_invalid_certs: bool,
}

/// The password stays out of logs.
impl std::fmt::Debug for SmtpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("from", &self.from)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("security", &self.security)
            .field("ca_file", &self.ca_file)
            .field("accept_invalid_certs", &self.accept_invalid_certs)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS; refused if the server does not offer it.
    #[default]
    Starttls,
    /// TLS from the first byte (SMTPS, usually port 465).
    Tls,
    /// No encryption: only for a relay on the same host.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Email,
    Webhook,
}

/// One notification sent (or not) for a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Delivery {
    pub channel: Channel,
    /// The addresses (comma-separated) or the webhook's URL.
    pub target: String,
    pub ok: bool,
    /// Why it was not delivered.
    pub error: Option<String>,
    /// Sends tried (webhooks are retried on connection errors and 5xx answers).
    pub attempts: u32,
}

impl Delivery {
    fn new(channel: Channel, target: String, attempts: u32, result: Result<(), String>) -> Delivery {
        let (ok, error) = match result {
            Ok(()) => (true, None),
            Err(e) => (false, Some(e)),
        };
        Delivery { channel, target, ok, error, attempts }
    }
}

/// Sends run reports; one per server, shared by all runs.
pub struct Notifier {
    smtp: Option<SmtpSettings>,
    webhooks: webhook::Sender,
}

impl Notifier {
    /// `smtp` is where emails go; without it, jobs asking for email get a failed delivery
    /// saying so.
    pub fn new(smtp: Option<SmtpSettings>) -> Notifier {
        Notifier { smtp, webhooks: webhook::Sender::new() }
    }

    /// Notifies about a finished run (its `tasks` are the run's task tree) when the job's
    /// `notifications.when` says so; nothing is sent, and nothing returned, otherwise.
    pub async fn run_finished(&self, job: &Job, run: &Run, tasks: &[Task]) -> Vec<Delivery> {
        let notifications = &job.notifications;
        if !wanted(notifications.when, run.status) {
            return Vec::new();
        }
        let report = Report::new(job, run, tasks);
        let mut deliveries = Vec::new();
        if !notifications.email.is_empty() {
            let target = notifications.email.join(", ");
            let result = match &self.smtp {
                Some(smtp) => email::send(smtp, &notifications.email, &report).await,
                None => Err("no SMTP server is configured (the server's [smtp] settings)".to_owned()),
            };
            let attempts = u32::from(self.smtp.is_some());
            deliveries.push(Delivery::new(Channel::Email, target, attempts, result));
        }
        if let Some(url) = &notifications.webhook {
            let (attempts, result) = self.webhooks.post(url, &report).await;
            deliveries.push(Delivery::new(Channel::Webhook, url.clone(), attempts, result));
        }
        for delivery in &deliveries {
            match &delivery.error {
                None => {
                    tracing::info!(run = %run.id, channel = ?delivery.channel, target = %delivery.target, "notified")
                }
                Some(error) => {
                    tracing::warn!(run = %run.id, channel = ?delivery.channel, target = %delivery.target, %error, "notification failed")
                }
            }
        }
        deliveries
    }
}

/// An error with its causes, `outer: inner: root` (lettre's and reqwest's Display leave
/// them out); a cause already quoted by its outer error is not repeated.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text = format!("{text}: {inner_text}");
        }
        source = inner.source();
    }
    text
}

/// Whether a run that ended with `status` is reported under `when`.
fn wanted(when: NotifyWhen, status: RunStatus) -> bool {
    match when {
        NotifyWhen::Always => true,
        NotifyWhen::Failure => status != RunStatus::Success,
        NotifyWhen::Never => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_means_anything_but_success() {
        use RunStatus::*;
        for status in [Partial, Failed, Cancelled, Interrupted] {
            assert!(wanted(NotifyWhen::Failure, status), "{status:?}");
            assert!(wanted(NotifyWhen::Always, status));
            assert!(!wanted(NotifyWhen::Never, status));
        }
        assert!(!wanted(NotifyWhen::Failure, Success));
        assert!(wanted(NotifyWhen::Always, Success));
    }

    #[test]
    fn settings_default_to_starttls_and_refuse_unknown_fields() {
        let settings: SmtpSettings =
            toml::from_str("host = \"mail.example\"\nport = 587\nfrom = \"backup@example.com\"\npassword = \"s3cret\"")
                .unwrap();
        assert_eq!(settings.security, SmtpSecurity::Starttls);
        assert!(!format!("{settings:?}").contains("s3cret"));
        let typo = toml::from_str::<SmtpSettings>("host = \"h\"\nport = 25\nfrom = \"a@b\"\nsecurty = \"none\"");
        assert!(typo.unwrap_err().to_string().contains("securty"));
    }
}
