//! A minimal JSON-RPC caller for the `xenvault sim ...` subcommands, which talk to
//! a running simulator. Any certificate is trusted: the simulator's is self-signed
//! and it is a test tool.

use xenvault_xapi_wire::{Failure, Value, jsonrpc};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    #[error("bad answer: {0}")]
    Wire(String),
    #[error("XenAPI failure: {}", .0.to_description().iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" "))]
    Api(Failure),
    #[error("TLS setup: {0}")]
    Tls(String),
}

pub struct SimClient {
    http: reqwest::Client,
    url: String,
    session: String,
}

impl SimClient {
    /// Logs in as root.
    pub async fn login(url: &str, password: &str) -> Result<Self, ClientError> {
        let tls = xenvault_tls::client_config(&xenvault_tls::ServerTrust::Insecure)
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        let http = reqwest::Client::builder().use_preconfigured_tls(tls).build()?;
        let mut client = SimClient { http, url: url.trim_end_matches('/').to_owned(), session: String::new() };
        let session = client
            .raw_call(
                "session.login_with_password",
                vec!["root".into(), password.into(), "1.0".into(), "xenvault".into()],
            )
            .await?;
        client.session = session.as_str().unwrap_or_default().to_owned();
        Ok(client)
    }

    /// Calls `method` with the session first, then `params`.
    pub async fn call(&self, method: &str, params: Vec<Value>) -> Result<Value, ClientError> {
        let mut all = vec![Value::from(self.session.as_str())];
        all.extend(params);
        self.raw_call(method, all).await
    }

    async fn raw_call(&self, method: &str, params: Vec<Value>) -> Result<Value, ClientError> {
        let body = jsonrpc::encode_call(method, &params, 1, jsonrpc::JsonRpcVersion::V2);
        let response = self.http.post(format!("{}/jsonrpc", self.url)).body(body).send().await?.error_for_status()?;
        let bytes = response.bytes().await?;
        jsonrpc::decode_response(&bytes).map_err(|e| ClientError::Wire(e.to_string()))?.map_err(ClientError::Api)
    }

    pub async fn logout(self) -> Result<(), ClientError> {
        self.call("session.logout", Vec::new()).await.map(|_| ())
    }
}
