//! The RPC side of the client: transports, session, calls.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use reqwest::Url;
use xenvault_xapi_wire::jsonrpc::{self, JsonRpcVersion};
use xenvault_xapi_wire::{Failure, HOST_IS_SLAVE, SESSION_INVALID, Value, xmlrpc};

use crate::tls::{self, ServerTrust};
use crate::{Error, Ref};

/// Which RPC encoding to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// JSON-RPC at `/jsonrpc` when the host has it, else XML-RPC at `/`.
    #[default]
    Auto,
    JsonRpc,
    XmlRpc,
}

/// Settings for a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    url: String,
    transport: Transport,
    tls: ServerTrust,
    connect_timeout: Duration,
    rpc_timeout: Duration,
    transfer_idle_timeout: Duration,
    task_poll_interval: Duration,
}

impl ClientBuilder {
    pub fn transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    pub fn tls(mut self, tls: ServerTrust) -> Self {
        self.tls = tls;
        self
    }

    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Longest wait for the answer to one RPC (transfers are not limited by it).
    pub fn rpc_timeout(mut self, timeout: Duration) -> Self {
        self.rpc_timeout = timeout;
        self
    }

    /// Longest a transfer may go without moving a byte (an export the host stops sending, an
    /// import it stops reading or answering) before it fails with [`Error::Stalled`].
    pub fn transfer_idle_timeout(mut self, timeout: Duration) -> Self {
        self.transfer_idle_timeout = timeout;
        self
    }

    /// How often [`Client::wait_task`] asks for a task's status.
    pub fn task_poll_interval(mut self, interval: Duration) -> Self {
        self.task_poll_interval = interval;
        self
    }

    pub fn build(self) -> Result<Client, Error> {
        let base = parse_base_url(&self.url)?;
        let mut http = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            // Redirects are followed by hand: xapi's 302 must keep the query and a streamed
            // upload cannot be replayed.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .http1_only()
            .user_agent(concat!("xenvault/", env!("CARGO_PKG_VERSION")));
        // Set even for plain HTTP: reqwest refuses to build without a provider otherwise.
        http = http.tls_backend_preconfigured(tls::client_config(&self.tls)?);
        let http = http.build().map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        let resolved = OnceLock::new();
        match self.transport {
            Transport::Auto => {}
            Transport::JsonRpc => {
                let _ = resolved.set(Protocol::Json);
            }
            Transport::XmlRpc => {
                let _ = resolved.set(Protocol::Xml);
            }
        }
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base: RwLock::new(base),
                protocol: resolved,
                session: RwLock::new(None),
                credentials: Mutex::new(None),
                relogin: tokio::sync::Mutex::new(()),
                next_id: AtomicU64::new(1),
                rpc_timeout: self.rpc_timeout,
                transfer_idle_timeout: self.transfer_idle_timeout,
                task_poll_interval: self.task_poll_interval,
            }),
        })
    }
}

/// `https://host[:port]`, `http://...` or a bare host (HTTPS); path and query are dropped.
fn parse_base_url(url: &str) -> Result<Url, Error> {
    let with_scheme = if url.contains("://") { url.to_owned() } else { format!("https://{url}") };
    let mut base = Url::parse(&with_scheme).map_err(|e| Error::Config(format!("URL {url:?}: {e}")))?;
    if !matches!(base.scheme(), "http" | "https") || base.host().is_none() {
        return Err(Error::Config(format!("URL {url:?}: need http(s)://host")));
    }
    base.set_path("/");
    base.set_query(None);
    base.set_fragment(None);
    Ok(base)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Json,
    Xml,
}

/// An async XenAPI client. Cheap to clone; clones share the session.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) http: reqwest::Client,
    /// Moves to the pool master when a login lands on another member.
    base: RwLock<Url>,
    protocol: OnceLock<Protocol>,
    session: RwLock<Option<Ref>>,
    credentials: Mutex<Option<(String, String)>>,
    /// Serialises re-logins so concurrent calls that meet SESSION_INVALID log in once.
    relogin: tokio::sync::Mutex<()>,
    next_id: AtomicU64,
    rpc_timeout: Duration,
    pub(crate) transfer_idle_timeout: Duration,
    pub(crate) task_poll_interval: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base_url().as_str())
            .field("protocol", &self.inner.protocol.get())
            .finish_non_exhaustive()
    }
}

/// The originator xapi records for our sessions.
pub const ORIGINATOR: &str = "xenvault";

/// Outcome of one RPC exchange: the host's verdict, or `None` when the host does not speak
/// JSON-RPC (Auto falls back).
type Exchange = Option<Result<Value, Failure>>;

impl Client {
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            url: url.into(),
            transport: Transport::Auto,
            tls: ServerTrust::default(),
            connect_timeout: Duration::from_secs(20),
            rpc_timeout: Duration::from_secs(600),
            transfer_idle_timeout: Duration::from_secs(300),
            task_poll_interval: Duration::from_millis(500),
        }
    }

    /// The host's base URL (`https://host:port/`): the pool master's once a login was sent
    /// there.
    pub fn base_url(&self) -> Url {
        self.inner.base.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The transport in use, once the first call has settled it.
    pub fn transport_in_use(&self) -> Option<Transport> {
        self.inner.protocol.get().map(|p| match p {
            Protocol::Json => Transport::JsonRpc,
            Protocol::Xml => Transport::XmlRpc,
        })
    }

    /// The current session, if logged in.
    pub fn session(&self) -> Option<Ref> {
        self.inner.session.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub(crate) fn session_or_err(&self) -> Result<Ref, Error> {
        self.session().ok_or(Error::NotLoggedIn)
    }

    fn set_session(&self, session: Option<Ref>) {
        *self.inner.session.write().unwrap_or_else(PoisonError::into_inner) = session;
    }

    /// Logs in (API version "1.0", originator "xenvault"); the credentials are kept to log in
    /// again when the session expires.
    pub async fn login_with_password(&self, user: &str, password: &str) -> Result<Ref, Error> {
        let session = self.login(user, password).await?;
        *self.inner.credentials.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((user.to_owned(), password.to_owned()));
        Ok(session)
    }

    async fn login(&self, user: &str, password: &str) -> Result<Ref, Error> {
        let params = [user.into(), password.into(), "1.0".into(), ORIGINATOR.into()];
        let answer = match self.call_raw("session.login_with_password", &params).await {
            // A pool member names its master: sessions are only made there.
            Err(Error::Failure(f)) if f.code == HOST_IS_SLAVE => {
                let master =
                    f.params.first().ok_or_else(|| Error::malformed("HOST_IS_SLAVE without the master's address"))?;
                self.move_to_master(master)?;
                self.call_raw("session.login_with_password", &params).await?
            }
            other => other?,
        };
        let session = Ref::from_value(&answer)?;
        self.set_session(Some(session.clone()));
        Ok(session)
    }

    /// Points the client at the master's address (an IP or name; keeps scheme and port
    /// unless the address carries a port).
    fn move_to_master(&self, master: &str) -> Result<(), Error> {
        let mut base = self.base_url();
        let bad = |e: String| Error::malformed(format!("master address {master:?}: {e}"));
        match master.parse::<std::net::SocketAddr>() {
            Ok(addr) => {
                base.set_ip_host(addr.ip()).map_err(|()| bad("not a host".into()))?;
                base.set_port(Some(addr.port())).map_err(|()| bad("no port".into()))?;
            }
            Err(_) => match master.parse::<std::net::IpAddr>() {
                Ok(ip) => base.set_ip_host(ip).map_err(|()| bad("not a host".into()))?,
                Err(_) => base.set_host(Some(master)).map_err(|e| bad(e.to_string()))?,
            },
        }
        tracing::info!(master = %base, "host is a pool member, logging in to the master");
        *self.inner.base.write().unwrap_or_else(PoisonError::into_inner) = base;
        Ok(())
    }

    /// Ends the session; an already expired session counts as logged out.
    pub async fn logout(&self) -> Result<(), Error> {
        *self.inner.credentials.lock().unwrap_or_else(PoisonError::into_inner) = None;
        let Some(session) = self.session() else {
            return Ok(());
        };
        self.set_session(None);
        match self.call_raw("session.logout", &[session.into()]).await {
            Err(e) if e.is_failure(SESSION_INVALID) => Ok(()),
            other => other.map(drop),
        }
    }

    /// Calls `method` with the session prepended. On `SESSION_INVALID` it logs in again once
    /// (when it has credentials) and repeats the call.
    pub async fn call(&self, method: &str, params: &[Value]) -> Result<Value, Error> {
        self.call_timeout(method, params, self.inner.rpc_timeout).await
    }

    pub(crate) async fn call_timeout(&self, method: &str, params: &[Value], timeout: Duration) -> Result<Value, Error> {
        let session = self.session_or_err()?;
        match self.call_with_session(&session, method, params, timeout).await {
            Err(e) if e.is_failure(SESSION_INVALID) && self.has_credentials() => {
                let fresh = self.relogin(&session).await?;
                self.call_with_session(&fresh, method, params, timeout).await
            }
            other => other,
        }
    }

    fn has_credentials(&self) -> bool {
        self.inner.credentials.lock().unwrap_or_else(PoisonError::into_inner).is_some()
    }

    async fn relogin(&self, stale: &Ref) -> Result<Ref, Error> {
        let _guard = self.inner.relogin.lock().await;
        if let Some(current) = self.session().filter(|s| s != stale) {
            return Ok(current); // another call already logged in again
        }
        let credentials = self.inner.credentials.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let (user, password) = credentials.ok_or(Error::NotLoggedIn)?;
        tracing::debug!("session expired, logging in again");
        self.login(&user, &password).await
    }

    async fn call_with_session(
        &self,
        session: &Ref,
        method: &str,
        params: &[Value],
        timeout: Duration,
    ) -> Result<Value, Error> {
        let mut all = Vec::with_capacity(params.len() + 1);
        all.push(Value::from(session));
        all.extend_from_slice(params);
        self.call_raw_timeout(method, &all, timeout).await
    }

    /// Calls `method` with exactly these parameters (no session added).
    pub async fn call_raw(&self, method: &str, params: &[Value]) -> Result<Value, Error> {
        self.call_raw_timeout(method, params, self.inner.rpc_timeout).await
    }

    async fn call_raw_timeout(&self, method: &str, params: &[Value], timeout: Duration) -> Result<Value, Error> {
        let outcome = match self.inner.protocol.get() {
            Some(Protocol::Xml) => self.xml_exchange(method, params, timeout).await?,
            Some(Protocol::Json) => self
                .json_exchange(method, params, timeout)
                .await?
                .ok_or_else(|| Error::malformed("the host has no JSON-RPC endpoint"))?,
            None => match self.json_exchange(method, params, timeout).await? {
                Some(outcome) => {
                    let _ = self.inner.protocol.set(Protocol::Json);
                    outcome
                }
                None => {
                    tracing::debug!("no JSON-RPC at /jsonrpc, using XML-RPC");
                    let outcome = self.xml_exchange(method, params, timeout).await?;
                    let _ = self.inner.protocol.set(Protocol::Xml);
                    outcome
                }
            },
        };
        outcome.map_err(Error::Failure)
    }

    async fn json_exchange(&self, method: &str, params: &[Value], timeout: Duration) -> Result<Exchange, Error> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let body = jsonrpc::encode_call(method, params, id, JsonRpcVersion::V2);
        let url = self.endpoint("jsonrpc")?;
        let response = self
            .inner
            .http
            .post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .timeout(timeout)
            .body(body)
            .send()
            .await?;
        let status = response.status();
        // Hosts without JSON-RPC refuse the path, or (old xapi) answer it as XML-RPC.
        let xml_answer = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.contains("xml"));
        let unsupported = matches!(status.as_u16(), 404 | 405 | 501) || xml_answer;
        if unsupported && self.inner.protocol.get().is_none() {
            return Ok(None);
        }
        let bytes = checked_body(response).await?;
        Ok(Some(jsonrpc::decode_response(&bytes)?))
    }

    async fn xml_exchange(
        &self,
        method: &str,
        params: &[Value],
        timeout: Duration,
    ) -> Result<Result<Value, Failure>, Error> {
        let body = xmlrpc::encode_call(method, params);
        let response = self
            .inner
            .http
            .post(self.base_url())
            .header(http::header::CONTENT_TYPE, "text/xml")
            .timeout(timeout)
            .body(body)
            .send()
            .await?;
        let bytes = checked_body(response).await?;
        Ok(xmlrpc::decode_response(&bytes)?)
    }

    pub(crate) fn endpoint(&self, path: &str) -> Result<Url, Error> {
        self.base_url().join(path).map_err(|e| Error::Config(format!("URL path {path:?}: {e}")))
    }
}

/// The body of a successful answer; any other status becomes [`Error::Http`].
async fn checked_body(response: reqwest::Response) -> Result<bytes::Bytes, Error> {
    let status = response.status();
    if !status.is_success() {
        return Err(http_error(response).await);
    }
    Ok(response.bytes().await?)
}

/// An [`Error::Http`] carrying the start of the body, which often says what went wrong.
pub(crate) async fn http_error(response: reqwest::Response) -> Error {
    const SHOWN: usize = 512;
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    let mut message: String = text.trim().chars().take(SHOWN).collect();
    if message.is_empty() {
        message = response_reason(status).to_owned();
    }
    Error::Http { status, message }
}

fn response_reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        let ok = |u: &str| parse_base_url(u).map(|u| u.to_string()).ok();
        assert_eq!(ok("host.example"), Some("https://host.example/".into()));
        assert_eq!(ok("http://10.0.0.1:8080/x?y=1"), Some("http://10.0.0.1:8080/".into()));
        assert!(parse_base_url("ftp://h").is_err());
        assert!(parse_base_url("https://").is_err());
    }
}
