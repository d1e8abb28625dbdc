//! The run report as a JSON POST, retried with exponential backoff when the receiver could
//! not be reached or answered 5xx; a 4xx answer is final (sending it again would not help).

use std::time::Duration;

use crate::{Report, error_chain};

/// Tries per webhook, the first included.
const TRIES: u32 = 3;
/// Wait before the second try; doubled before each further one.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Sender {
    /// Built once; a machine without CA certificates still reaches `http://` receivers and
    /// gets this error for `https://` ones.
    client: Result<reqwest::Client, String>,
    /// A client for `http://` URLs, which need no trust store.
    plain: Result<reqwest::Client, String>,
}

impl Sender {
    pub fn new() -> Sender {
        let client = xenvault_tls::client_config(&xenvault_tls::ServerTrust::SystemRoots)
            .map_err(|e| format!("HTTPS webhooks need the system's CA certificates: {e}"))
            .and_then(|tls| builder().use_preconfigured_tls(tls).build().map_err(|e| format!("HTTPS client: {e}")));
        // No roots at all: this client is never used for https.
        let no_roots = rustls::ClientConfig::builder_with_provider(xenvault_tls::ring_provider())
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(rustls::RootCertStore::empty()).with_no_client_auth());
        let plain = match no_roots {
            Ok(tls) => builder().use_preconfigured_tls(tls).build().map_err(|e| format!("HTTP client: {e}")),
            Err(e) => Err(format!("HTTP client: {e}")),
        };
        Sender { client, plain }
    }

    /// POSTs `report` to `url`: the tries made, and the last failure if none succeeded.
    pub async fn post(&self, url: &str, report: &Report<'_>) -> (u32, Result<(), String>) {
        let parsed = match reqwest::Url::parse(url) {
            Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => parsed,
            Ok(parsed) => {
                return (0, Err(format!("webhook URL {url:?}: scheme {:?} is not http or https", parsed.scheme())));
            }
            Err(e) => return (0, Err(format!("webhook URL {url:?}: {e}"))),
        };
        let client = match if parsed.scheme() == "https" { &self.client } else { &self.plain } {
            Ok(client) => client,
            Err(e) => return (0, Err(e.clone())),
        };
        let mut backoff = FIRST_BACKOFF;
        let mut tries = 0;
        loop {
            tries += 1;
            let outcome = match client.post(parsed.clone()).json(report).send().await {
                Ok(response) if response.status().is_success() => return (tries, Ok(())),
                Ok(response) => {
                    let status = response.status();
                    let body = response.text().await.unwrap_or_default();
                    let error = format!("the receiver answered {status}{}", excerpt(&body));
                    Outcome { error, retry: status.is_server_error() }
                }
                Err(e) => Outcome { error: format!("POST failed: {}", error_chain(&e)), retry: true },
            };
            if !outcome.retry || tries == TRIES {
                return (tries, Err(outcome.error));
            }
            tracing::debug!(url, tries, error = %outcome.error, "webhook: trying again in {backoff:?}");
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
}

struct Outcome {
    error: String,
    retry: bool,
}

fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder().timeout(REQUEST_TIMEOUT).user_agent(concat!("xenvault/", env!("CARGO_PKG_VERSION")))
}

/// The start of a receiver's answer, enough to say why it refused.
fn excerpt(body: &str) -> String {
    let body = body.trim();
    if body.is_empty() {
        return String::new();
    }
    let cut: String = body.chars().take(200).collect();
    format!(": {cut}")
}
