//! The client against a small xapi stand-in (tests/mock): transports, sessions, tasks,
//! transfers, TLS.

mod mock;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use mock::{DISK, Mock, PASSWORD, USER};
use xenvault_xapi::{CancellationToken, Client, DiskFormat, Error, ImportTarget, Ref, ServerTrust, Transport, Value};

fn client(url: &str) -> Client {
    Client::builder(url).task_poll_interval(Duration::from_millis(10)).build().expect("client")
}

async fn logged_in(mock: &Mock) -> Client {
    let client = client(&mock.serve().await);
    client.login_with_password(USER, PASSWORD).await.expect("login");
    client
}

/// Two hosts of one pool (shared sessions and tasks): the second sends transfers to the
/// first with a 302.
async fn redirecting_pair() -> (Mock, Mock) {
    let serving = Mock::new(true);
    let serving_url = serving.serve().await;
    let front = Mock { redirect_to: Some(serving_url), ..serving.clone() };
    (serving, front)
}

fn forced(url: &str, transport: Transport) -> Client {
    Client::builder(url).transport(transport).build().expect("client")
}

/// Starts the export of the mock's one disk.
async fn export_vdi(client: &Client, format: DiskFormat) -> Result<xenvault_xapi::Download, Error> {
    client.export_raw_vdi(&Ref::new("OpaqueRef:vdi-1"), format, None).await
}

async fn collect(download: xenvault_xapi::Download) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    let mut body = download;
    while let Some(chunk) = body.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

#[tokio::test]
async fn auto_prefers_json_rpc() {
    let mock = Mock::new(true);
    let client = logged_in(&mock).await;
    assert_eq!(client.transport_in_use(), Some(Transport::JsonRpc));
    let vms = client.get_all_records("VM").await.expect("records");
    let vm = vms.get(&Ref::new("OpaqueRef:vm-1")).expect("vm-1");
    // JSON-RPC carries int64 as a number.
    assert_eq!(vm.get("memory_static_max"), Some(&Value::Int(1 << 30)));
}

#[tokio::test]
async fn auto_falls_back_to_xml_rpc() {
    let mock = Mock::new(false);
    let client = logged_in(&mock).await;
    assert_eq!(client.transport_in_use(), Some(Transport::XmlRpc));
    let vms = client.get_all_records("VM").await.expect("records");
    let vm = vms.get(&Ref::new("OpaqueRef:vm-1")).expect("vm-1");
    // XML-RPC carries int64 as text; as_i64 reads both.
    assert_eq!(vm.get("memory_static_max"), Some(&Value::from("1073741824")));
    assert_eq!(vm.get("memory_static_max").and_then(Value::as_i64), Some(1 << 30));
    let found = client.get_by_uuid("VM", "00000000-0000-4000-8000-000000000001").await;
    assert_eq!(found.expect("by uuid"), Ref::new("OpaqueRef:vm-1"));
}

#[tokio::test]
async fn auto_falls_back_when_jsonrpc_is_answered_as_xml() {
    let mut mock = Mock::new(false);
    mock.jsonrpc_answers_xml = true;
    let client = logged_in(&mock).await;
    assert_eq!(client.transport_in_use(), Some(Transport::XmlRpc));
    client.get_all_records("VM").await.expect("records");
}

#[tokio::test]
async fn login_on_a_pool_member_moves_to_the_master() {
    let master = Mock::new(true);
    let master_url = master.serve().await;
    let mut member = Mock::new(true);
    // xapi names the master by address; the mock adds the port the test server got.
    member.master = master_url.strip_prefix("http://").map(str::to_owned);
    let client = client(&member.serve().await);
    client.login_with_password(USER, PASSWORD).await.expect("login via the master");
    assert_eq!(client.base_url().as_str(), format!("{master_url}/"));
    client.get_all_records("VM").await.expect("calls go to the master");
    assert_eq!(master.state().logins, 1);
}

#[tokio::test]
async fn forced_json_rpc_reports_a_missing_endpoint() {
    let mock = Mock::new(false);
    let url = mock.serve().await;
    let client = forced(&url, Transport::JsonRpc);
    let err = client.login_with_password(USER, PASSWORD).await.expect_err("no /jsonrpc");
    assert!(matches!(err, Error::Http { status: 404, .. }), "{err:?}");
}

#[tokio::test]
async fn failures_are_typed() {
    for jsonrpc in [true, false] {
        let mock = Mock::new(jsonrpc);
        let client = client(&mock.serve().await);
        let err = client.login_with_password(USER, "wrong").await.expect_err("bad password");
        assert!(err.is_failure("SESSION_AUTHENTICATION_FAILED"), "{err:?}");
        client.login_with_password(USER, PASSWORD).await.expect("login");
        let err = client.call("VM.frobnicate", &[]).await.expect_err("unknown");
        let failure = err.failure().expect("a XenAPI failure");
        assert_eq!(failure.code, "MESSAGE_METHOD_UNKNOWN");
        assert_eq!(failure.params, vec!["VM.frobnicate".to_owned()]);
        let err = client.get_by_uuid("VM", "nope").await.expect_err("unknown uuid");
        assert!(err.is_failure("UUID_INVALID"), "{err:?}");
    }
}

#[tokio::test]
async fn logs_in_again_once_when_the_session_expires() {
    let mock = Mock::new(true);
    let client = logged_in(&mock).await;
    let first = client.session().expect("session");
    mock.expire_sessions();
    client.get_all_records("VM").await.expect("call after re-login");
    assert_ne!(client.session(), Some(first));
    assert_eq!(mock.state().logins, 2);

    // Without credentials (after logout) the failure is returned as is.
    client.logout().await.expect("logout");
    assert!(matches!(client.call("VM.get_all_records", &[]).await, Err(Error::NotLoggedIn)));
}

#[tokio::test]
async fn not_logged_in_is_an_error_not_a_call() {
    let mock = Mock::new(true);
    let client = client(&mock.serve().await);
    assert!(matches!(client.get_all_records("VM").await, Err(Error::NotLoggedIn)));
    assert!(mock.state().calls.is_empty());
}

#[tokio::test]
async fn async_call_reports_progress_and_decodes_the_result() {
    let mock = Mock::new(false);
    let client = logged_in(&mock).await;
    let task = client.call_async("VM.snapshot", &["OpaqueRef:vm-1".into(), "snap".into()]).await;
    let task = task.expect("task");
    let mut seen = Vec::new();
    let result = client.wait_task(&task, |p| seen.push(p), None).await.expect("result");
    assert_eq!(result, Value::from("OpaqueRef:snapshot-1"));
    assert_eq!(seen.last(), Some(&1.0));
    assert!(seen.len() >= 2, "progress reported while pending: {seen:?}");
    assert!(mock.state().destroyed_tasks.contains(&task.to_string()));
}

#[tokio::test]
async fn cancelling_a_wait_cancels_the_task() {
    let mock = Mock::new(true);
    let client = logged_in(&mock).await;
    let task = client.call_async("VM.clean_shutdown", &["OpaqueRef:vm-1".into()]).await;
    let task = task.expect("task");
    let token = CancellationToken::new();
    let canceller = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        canceller.cancel();
    });
    let err = client.wait_task(&task, |_| {}, Some(&token)).await.expect_err("cancelled");
    assert!(matches!(err, Error::Cancelled), "{err:?}");
    assert!(mock.state().calls.iter().any(|c| c == "task.cancel"));
    assert!(mock.state().destroyed_tasks.contains(&task.to_string()));
}

#[tokio::test]
async fn export_follows_a_redirect_keeping_session_and_task() {
    let (serving, front) = redirecting_pair().await;
    let client = logged_in(&front).await;
    let download = export_vdi(&client, DiskFormat::Raw).await.expect("export");
    let task = download.task().clone();
    assert_eq!(collect(download).await.expect("body"), DISK);
    let query = serving.state().export_query.clone().expect("reached the serving host");
    assert_eq!(query.get("vdi").map(String::as_str), Some("OpaqueRef:vdi-1"));
    assert_eq!(query.get("format").map(String::as_str), Some("raw"));
    assert_eq!(query.get("task_id"), Some(&task.to_string()));
    assert!(serving.state().destroyed_tasks.contains(&task.to_string()));
    // Read to its end, the download settled its task: nothing to cancel.
    assert!(!serving.state().calls.iter().any(|c| c == "task.cancel"));
}

#[tokio::test]
async fn export_with_an_http_error_as_body_is_an_error() {
    let mock = Mock::new(true);
    mock.state().export_disguised_error = true;
    let client = logged_in(&mock).await;
    let download = export_vdi(&client, DiskFormat::Vhd).await.expect("200");
    let err = collect(download).await.expect_err("disguised error");
    assert!(matches!(&err, Error::Http { status: 500, message } if message.contains("VDI_IO_ERROR")), "{err:?}");
}

#[tokio::test]
async fn export_whose_task_fails_ends_with_the_failure() {
    let mock = Mock::new(true);
    mock.state().export_fails_with = Some(vec!["VDI_IO_ERROR".into(), "disk gone".into()]);
    let client = logged_in(&mock).await;
    let download = export_vdi(&client, DiskFormat::Raw).await.expect("200");
    let err = collect(download).await.expect_err("task failure");
    assert!(err.is_failure("VDI_IO_ERROR"), "{err:?}");
}

#[tokio::test]
async fn an_abandoned_download_cancels_and_destroys_its_task() {
    let mock = Mock::new(true);
    let client = logged_in(&mock).await;
    let download = export_vdi(&client, DiskFormat::Raw).await.expect("200");
    let task = download.task().to_string();
    drop(download);
    for _ in 0..200 {
        if mock.state().destroyed_tasks.contains(&task) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(mock.state().destroyed_tasks.contains(&task));
    assert!(mock.state().calls.iter().any(|c| c == "task.cancel"));
}

#[tokio::test]
async fn import_sends_content_length_not_chunks_and_follows_redirects() {
    let (serving, front) = redirecting_pair().await;
    let client = logged_in(&front).await;
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> =
        DISK.chunks(7).map(|c| Ok(bytes::Bytes::copy_from_slice(c))).collect();
    let sr = Ref::new("OpaqueRef:sr-1");
    let body = futures::stream::iter(chunks);
    let vdi =
        client.import_raw_vdi(ImportTarget::Sr(&sr), DiskFormat::Raw, body, DISK.len() as u64).await.expect("import");
    assert_eq!(vdi, Ref::new("OpaqueRef:vdi-new"));
    let (headers, received) = serving.state().imported.clone().expect("imported");
    assert_eq!(received.as_ref(), DISK);
    let length = headers.get("content-length").and_then(|v| v.to_str().ok());
    assert_eq!(length, Some(DISK.len().to_string().as_str()));
    assert!(headers.get("transfer-encoding").is_none());
}

#[tokio::test]
async fn malformed_and_failed_answers_are_errors() {
    use axum::routing::post;
    let router = axum::Router::new()
        .route("/jsonrpc", post(|| async { "this is not json" }))
        .route("/", post(|| async { (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "boom") }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, router).await });

    let json = forced(&url, Transport::JsonRpc);
    let err = json.login_with_password(USER, PASSWORD).await.expect_err("garbage");
    assert!(matches!(err, Error::Malformed(_)), "{err:?}");
    let xml = forced(&url, Transport::XmlRpc);
    let err = xml.login_with_password(USER, PASSWORD).await.expect_err("500");
    assert!(matches!(&err, Error::Http { status: 500, message } if message == "boom"), "{err:?}");

    let refused = Client::builder("http://127.0.0.1:1").build().expect("client");
    let err = refused.login_with_password(USER, PASSWORD).await.expect_err("refused");
    assert!(matches!(err, Error::Connect(_)), "{err:?}");
}

/// Serves the mock over TLS with a fresh self-signed certificate; returns the URL, the
/// certificate's PEM and its SHA-256 fingerprint.
async fn serve_tls(mock: &Mock) -> (String, String, String) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::service::TowerToHyperService;

    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let cert_der = certified.cert.der().clone();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone()], key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let router = mock.router();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let service = TowerToHyperService::new(router.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    let fingerprint = xenvault_xapi::fingerprint_sha256(cert_der.as_ref());
    (format!("https://localhost:{port}"), certified.cert.pem(), fingerprint)
}

#[tokio::test]
async fn tls_pinning_ca_and_insecure() {
    let mock = Mock::new(true);
    let (url, pem, fingerprint) = serve_tls(&mock).await;
    let with = |tls: ServerTrust| Client::builder(&url).tls(tls).build().expect("client");

    let pinned = with(ServerTrust::pin_sha256_hex(&fingerprint).expect("pin"));
    pinned.login_with_password(USER, PASSWORD).await.expect("pinned fingerprint accepted");
    let no_colons = fingerprint.replace(':', "").to_lowercase();
    let pinned = with(ServerTrust::pin_sha256_hex(&no_colons).expect("pin"));
    pinned.login_with_password(USER, PASSWORD).await.expect("same pin without colons");

    let wrong = with(ServerTrust::PinSha256([7; 32]));
    let err = wrong.login_with_password(USER, PASSWORD).await.expect_err("wrong pin");
    assert!(matches!(&err, Error::Tls(m) if m.contains("does not match")), "{err:?}");

    let trusted = with(ServerTrust::CaPem(pem.into_bytes()));
    trusted.login_with_password(USER, PASSWORD).await.expect("certificate as CA");

    let err = match Client::builder(&url).build() {
        Ok(system) => system.login_with_password(USER, PASSWORD).await.expect_err("unknown CA"),
        Err(e) => e, // no system roots on this machine: also a refusal
    };
    assert!(matches!(err, Error::Tls(_) | Error::Config(_)), "{err:?}");

    let insecure = with(ServerTrust::Insecure);
    insecure.login_with_password(USER, PASSWORD).await.expect("insecure when asked");
}
