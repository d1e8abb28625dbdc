//! The run report by email: one multipart/alternative message (text, then HTML) to all of
//! the job's addresses, through the configured SMTP server.

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::{Report, SmtpSecurity, SmtpSettings, error_chain};

/// Sends `report` to `recipients`; the error says what went wrong in words.
pub async fn send(smtp: &SmtpSettings, recipients: &[String], report: &Report<'_>) -> Result<(), String> {
    let message = message(smtp, recipients, report)?;
    let transport = transport(smtp)?;
    transport
        .send(message)
        .await
        .map(drop)
        .map_err(|e| format!("sending through {}:{}: {}", smtp.host, smtp.port, error_chain(&e)))
}

fn message(smtp: &SmtpSettings, recipients: &[String], report: &Report<'_>) -> Result<Message, String> {
    let from: Mailbox = smtp.from.parse().map_err(|e| format!("sender address {:?}: {e}", smtp.from))?;
    let mut builder = Message::builder().from(from).subject(report.subject());
    for recipient in recipients {
        let to: Mailbox = recipient.parse().map_err(|e| format!("recipient address {recipient:?}: {e}"))?;
        builder = builder.to(to);
    }
    builder
        .multipart(MultiPart::alternative_plain_html(report.text(), report.html()))
        .map_err(|e| format!("building the message: {e}"))
}

fn transport(smtp: &SmtpSettings) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host).port(smtp.port);
    builder = match smtp.security {
        SmtpSecurity::Starttls => builder.tls(Tls::Required(tls_parameters(smtp)?)),
        SmtpSecurity::Tls => builder.tls(Tls::Wrapper(tls_parameters(smtp)?)),
        SmtpSecurity::None => builder.tls(Tls::None),
    };
    if let Some(username) = &smtp.username {
        let password = smtp.password.clone().unwrap_or_default();
        builder = builder.credentials(Credentials::new(username.clone(), password));
    }
    Ok(builder.build())
}

fn tls_parameters(smtp: &SmtpSettings) -> Result<TlsParameters, String> {
    let mut builder =
        TlsParameters::builder(smtp.host.clone()).dangerous_accept_invalid_certs(smtp.accept_invalid_certs);
    if let Some(ca_file) = &smtp.ca_file {
        let pem = std::fs::read(ca_file).map_err(|e| format!("reading the SMTP CA file {}: {e}", ca_file.display()))?;
        let ca = Certificate::from_pem(&pem).map_err(|e| format!("SMTP CA file {}: {e}", ca_file.display()))?;
        builder = builder.certificate_store(CertificateStore::None).add_root_certificate(ca);
    }
    builder.build_rustls().map_err(|e| format!("SMTP TLS settings: {}", error_chain(&e)))
}
