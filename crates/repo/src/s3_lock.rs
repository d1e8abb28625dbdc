//! The S3 requests OpenDAL 0.59 cannot send: the bucket's object-lock configuration and
//! per-object retention. They go through the operator's own HTTP transport (same client,
//! same TLS trust) and are signed by reqsign with the operator's credential provider, so
//! whatever credentials store objects (keys, environment, profile files, SSO, instance
//! roles) also lock them.

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use opendal::{Buffer, HttpTransporter};
use reqsign_aws_v4::{Credential, RequestSigner};
use reqsign_core::{Context, OsEnv, ProvideCredential, Signer};

use crate::backend::{BackendError, ObjectRetention, Result, RetentionMode};

/// Bounds one request: the operator's own requests are bounded by its timeout layer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) struct S3ObjectLock {
    transport: HttpTransporter,
    signer: Signer<Credential>,
    /// `scheme://host[:port]` of the bucket (the bucket is in the host in virtual-host style).
    base: reqwest::Url,
    /// `/bucket` in path style, empty in virtual-host style.
    bucket_path: String,
    /// The repository prefix inside the bucket, with a trailing `/` unless empty.
    root: String,
    retries: usize,
}

impl std::fmt::Debug for S3ObjectLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3ObjectLock")
            .field("base", &self.base.as_str())
            .field("bucket_path", &self.bucket_path)
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// Where the bucket is and how to reach it.
pub(crate) struct S3Target<'a> {
    pub endpoint: &'a str,
    pub region: &'a str,
    pub bucket: &'a str,
    pub prefix: &'a str,
    pub virtual_host_style: bool,
    pub retries: usize,
}

impl S3ObjectLock {
    pub(crate) fn new(
        target: &S3Target<'_>,
        credentials: impl ProvideCredential<Credential = Credential>,
        transport: HttpTransporter,
    ) -> std::result::Result<Self, String> {
        let endpoint = target.endpoint;
        let mut base = reqwest::Url::parse(endpoint).map_err(|e| format!("S3 endpoint {endpoint:?}: {e}"))?;
        let bucket_path = if target.virtual_host_style {
            let host = base.host_str().ok_or_else(|| format!("S3 endpoint {endpoint:?} has no host"))?;
            base.set_host(Some(&format!("{}.{host}", target.bucket)))
                .map_err(|e| format!("S3 endpoint {endpoint:?}: {e}"))?;
            String::new()
        } else {
            format!("/{}", uri_encode(target.bucket))
        };
        base.set_path("");
        // The context OpenDAL signs with: configuration from files and the environment,
        // and the same transport for credential services (STS, SSO, instance metadata).
        let context = Context::new()
            .with_file_read(reqsign_file_read_tokio::TokioFileRead)
            .with_env(OsEnv)
            .with_http_send(transport.clone());
        Ok(S3ObjectLock {
            signer: Signer::new(context, credentials, RequestSigner::new("s3", target.region)),
            transport,
            base,
            bucket_path,
            root: if target.prefix.is_empty() { String::new() } else { format!("{}/", target.prefix) },
            retries: target.retries,
        })
    }

    /// Whether the bucket was created with object lock (`GET ?object-lock`). A server
    /// without the call (`NotImplemented`) counts as false.
    pub(crate) async fn enabled(&self, location: &str) -> Result<bool> {
        let reply = self.send(location, http::Method::GET, None, "object-lock", Bytes::new()).await?;
        match reply.status {
            200 => Ok(xml_field(&reply.body, "ObjectLockEnabled").as_deref() == Some("Enabled")),
            _ if reply.code == "ObjectLockConfigurationNotFoundError" || reply.code == "NotImplemented" => Ok(false),
            _ => Err(reply.into_error(location, "get object-lock configuration", "")),
        }
    }

    /// `PUT ?retention` on the current version of `path`.
    pub(crate) async fn retain(
        &self,
        location: &str,
        path: &str,
        mode: RetentionMode,
        until: DateTime<Utc>,
    ) -> Result<()> {
        let body = format!(
            "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>{}</Mode><RetainUntilDate>{}</RetainUntilDate></Retention>",
            mode.s3_name(),
            until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        let reply = self.send(location, http::Method::PUT, Some(path), "retention", Bytes::from(body)).await?;
        match reply.status {
            200..=299 => Ok(()),
            _ => Err(reply.into_error(location, "put retention", path)),
        }
    }

    /// `GET ?retention` of the current version of `path`; `None` when it has none.
    pub(crate) async fn retention(&self, location: &str, path: &str) -> Result<Option<ObjectRetention>> {
        let reply = self.send(location, http::Method::GET, Some(path), "retention", Bytes::new()).await?;
        // AWS says NoSuchObjectLockConfiguration, SeaweedFS ObjectLockConfigurationNotFoundError.
        if reply.status == 404
            && matches!(reply.code.as_str(), "NoSuchObjectLockConfiguration" | "ObjectLockConfigurationNotFoundError")
        {
            return Ok(None);
        }
        if !(200..=299).contains(&reply.status) {
            return Err(reply.into_error(location, "get retention", path));
        }
        let malformed = |what: &str| BackendError::MalformedReply {
            location: location.to_string(),
            operation: "get retention",
            message: what.to_string(),
        };
        let mode = xml_field(&reply.body, "Mode").ok_or_else(|| malformed("no <Mode>"))?;
        let until = xml_field(&reply.body, "RetainUntilDate").ok_or_else(|| malformed("no <RetainUntilDate>"))?;
        Ok(Some(ObjectRetention {
            mode: mode.parse().map_err(|e: String| malformed(&e))?,
            until: DateTime::parse_from_rfc3339(&until)
                .map_err(|e| malformed(&format!("RetainUntilDate {until:?}: {e}")))?
                .with_timezone(&Utc),
        }))
    }

    /// One signed request on the bucket (`key` None) or on an object, with the
    /// sub-resource `subresource`; retries network errors, 5xx and throttling with
    /// exponential backoff.
    async fn send(
        &self,
        location: &str,
        method: http::Method,
        key: Option<&str>,
        subresource: &str,
        body: Bytes,
    ) -> Result<S3Reply> {
        let path = match key {
            Some(key) => format!("{}/{}", self.bucket_path, uri_encode(&format!("{}{key}", self.root))),
            None if self.bucket_path.is_empty() => "/".to_string(),
            None => self.bucket_path.clone(),
        };
        let mut url = self.base.clone();
        url.set_path(&path);
        url.set_query(Some(subresource));
        let failed = |message: String| BackendError::Network {
            location: location.to_string(),
            message: format!("{method} ?{subresource}: {message}"),
        };
        let mut delay = Duration::from_millis(200);
        let mut attempt = 0;
        loop {
            let request = self.signed(&method, url.as_str(), &body).await.map_err(|e| sign_error(location, e))?;
            let outcome = match tokio::time::timeout(REQUEST_TIMEOUT, self.transport.send(request)).await {
                Ok(Ok(response)) => {
                    let status = response.status().as_u16();
                    let text = String::from_utf8_lossy(&response.into_body().to_bytes()).into_owned();
                    Ok(S3Reply { status, code: xml_field(&text, "Code").unwrap_or_default(), body: text })
                }
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
            };
            let retryable = match &outcome {
                Ok(reply) => reply.status >= 500 || reply.status == 429 || reply.code == "SlowDown",
                Err(_) => true,
            };
            if !retryable || attempt >= self.retries {
                return outcome.map_err(failed);
            }
            attempt += 1;
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(20));
        }
    }

    /// The request with its payload checksums (S3 wants Content-MD5 on retention puts)
    /// and SigV4 headers.
    async fn signed(
        &self,
        method: &http::Method,
        url: &str,
        body: &Bytes,
    ) -> reqsign_core::Result<http::Request<Buffer>> {
        use base64::Engine;
        use md5::Digest;
        let mut request = http::Request::builder()
            .method(method.clone())
            .uri(url)
            .header("x-amz-content-sha256", hex::encode(ring::digest::digest(&ring::digest::SHA256, body)));
        if !body.is_empty() {
            request =
                request.header("content-md5", base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(body)));
        }
        let request = request
            .body(Buffer::from(body.clone()))
            .map_err(|e| reqsign_core::Error::request_invalid(format!("S3 request {url}: {e}")))?;
        let (mut parts, body) = request.into_parts();
        self.signer.sign(&mut parts, None).await?;
        // The transport sets the host header itself, as for OpenDAL's own requests.
        parts.headers.remove(http::header::HOST);
        Ok(http::Request::from_parts(parts, body))
    }
}

/// A credential that cannot be loaded is a configuration problem the user must fix.
fn sign_error(location: &str, e: reqsign_core::Error) -> BackendError {
    BackendError::Config { location: location.to_string(), message: format!("signing an S3 request: {e}") }
}

/// Status, S3 error code and body of one answer.
struct S3Reply {
    status: u16,
    code: String,
    body: String,
}

impl S3Reply {
    fn into_error(self, location: &str, operation: &'static str, path: &str) -> BackendError {
        let location = location.to_string();
        let message = xml_field(&self.body, "Message").unwrap_or_default();
        match (self.status, self.code.as_str()) {
            (_, "NoSuchBucket") => BackendError::NoSuchBucket { location },
            (_, "NoSuchKey") | (404, "") => BackendError::NotFound { location, path: path.to_string() },
            (_, "InvalidRequest") if message.to_ascii_lowercase().contains("object lock") => {
                BackendError::ObjectLockDisabled { location }
            }
            (403, _) => {
                BackendError::AccessDenied { location, message: format!("{operation} {path}: {} {message}", self.code) }
            }
            (status, code) => BackendError::S3 {
                location,
                operation,
                path: path.to_string(),
                status,
                code: code.to_string(),
                message,
            },
        }
    }
}

/// SigV4 URI encoding of an object path: unreserved characters and `/` stay, the rest is `%XX`.
fn uri_encode(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for byte in path.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~/".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Text of the first element named `name` in an S3 XML document.
fn xml_field(xml: &str, name: &str) -> Option<String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut inside = false;
    loop {
        match reader.read_event().ok()? {
            Event::Start(e) => inside = e.local_name().as_ref() == name.as_bytes(),
            Event::Text(text) if inside => return text.unescape().ok().map(|t| t.trim().to_string()),
            Event::End(_) => inside = false,
            Event::Eof => return None,
            _ => {}
        }
    }
}
