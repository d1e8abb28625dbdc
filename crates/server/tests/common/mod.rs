//! A server started in the test process on a free loopback port, with a fresh data dir,
//! and HTTPS clients that pin its certificate.

#![allow(dead_code)]

use reqwest::{Client, Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use xenvault_server::{Server, ServerConfig};

pub const ADMIN_PASSWORD: &str = "first-admin-password";

pub struct TestServer {
    pub server: Server,
    pub url: String,
    /// A client with no credentials (pins the server's certificate).
    pub http: Client,
    pub data_dir: tempfile::TempDir,
}

pub async fn start() -> TestServer {
    let data_dir = tempfile::tempdir().expect("temp dir");
    start_in(data_dir).await
}

pub async fn start_in(data_dir: tempfile::TempDir) -> TestServer {
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.path().to_owned(),
        admin_password: Some(ADMIN_PASSWORD.into()),
        ..ServerConfig::default()
    };
    let server = Server::start(config).await.expect("server starts");
    let http = pinned_client(server.fingerprint());
    TestServer { url: server.url(), server, http, data_dir }
}

/// A client that accepts only the certificate with this SHA-256 fingerprint.
pub fn pinned_client(fingerprint: &str) -> Client {
    let pin = xenvault_tls::parse_sha256_fingerprint(fingerprint).expect("fingerprint");
    let tls = xenvault_tls::client_config(&xenvault_tls::ServerTrust::PinSha256(pin)).expect("tls");
    Client::builder().use_preconfigured_tls(tls).build().expect("client")
}

/// The web login: the session cookie's value and the CSRF token.
pub struct WebSession {
    pub cookie: String,
    pub csrf: String,
    pub set_cookie: String,
}

impl TestServer {
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{path}", self.url))
    }

    pub fn with_token(&self, method: Method, path: &str, token: &str) -> RequestBuilder {
        self.request(method, path).bearer_auth(token)
    }

    pub async fn login(&self, user: &str, password: &str) -> Result<WebSession, Response> {
        let response = self
            .request(Method::POST, "/api/auth/login")
            .json(&json!({"user": user, "password": password}))
            .send()
            .await
            .expect("login request");
        if response.status() != StatusCode::OK {
            return Err(response);
        }
        let set_cookie = response.headers()["set-cookie"].to_str().unwrap().to_owned();
        let cookie = set_cookie.split(';').next().unwrap().to_owned();
        let body: Value = response.json().await.unwrap();
        Ok(WebSession { cookie, csrf: body["csrf_token"].as_str().unwrap().to_owned(), set_cookie })
    }

    /// An API token of `role`, made by the first admin through the web session.
    pub async fn token(&self, role: &str) -> String {
        let session = self.login("admin", ADMIN_PASSWORD).await.unwrap_or_else(|_| panic!("admin login"));
        let response = self
            .request(Method::POST, "/api/tokens")
            .header("cookie", &session.cookie)
            .header("x-csrf-token", &session.csrf)
            .json(&json!({"name": format!("test {role}"), "role": role}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: Value = response.json().await.unwrap();
        body["secret"].as_str().expect("secret").to_owned()
    }

    pub async fn get_json(&self, path: &str, token: &str) -> Value {
        let response = self.with_token(Method::GET, path, token).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        response.json().await.unwrap()
    }
}

/// Asserts an error answer's status and stable code.
pub async fn assert_error(response: Response, status: StatusCode, code: &str) -> String {
    let got = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(got, status, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("error body {text:?} is not JSON: {e}"));
    assert_eq!(body["code"], code, "{text}");
    body["message"].as_str().expect("message").to_owned()
}
