//! `/pool/xmldbdump` over plain HTTP, as curl or the Python SDK's users reach it: what
//! xapi checks before any database work (401 without a valid session, 400 for a PUT
//! without a Content-Length), and the outcome of a PUT on the task named by `task_id`
//! (the answer itself is 200 whatever happens: xapi sends it before reading the body).

mod common;

use common::{http, start};
use serde_json::{Value as Json, json};

async fn rpc(base: &str, method: &str, params: Json) -> Json {
    let call = json!({ "jsonrpc": "2.0", "method": method, "params": params, "id": 1 });
    let answer: Json = http().post(format!("{base}/jsonrpc")).json(&call).send().await.unwrap().json().await.unwrap();
    answer.get("result").cloned().unwrap_or_else(|| panic!("{method}: {answer}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_checks_credentials_and_length_then_reports_on_its_task() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), true).await;
    let base = sim.url.trim_end_matches('/').to_owned();
    let session = rpc(&base, "session.login_with_password", json!(["root", sim.password])).await;
    let session = session.as_str().unwrap().to_owned();
    let url = format!("{base}/pool/xmldbdump");

    let refused = http().put(format!("{url}?session_id=OpaqueRef:nope&dry_run=true")).body("x").send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let chunked = futures::stream::once(async { Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"<database>")) });
    let no_length = http()
        .put(format!("{url}?session_id={session}&dry_run=true"))
        .body(reqwest::Body::wrap_stream(chunked))
        .send()
        .await
        .unwrap();
    assert_eq!(no_length.status(), 400);

    // The dump as GET serves it passes the dry run; the task says so.
    let dump = http().get(format!("{url}?session_id={session}")).send().await.unwrap();
    assert_eq!(dump.status(), 200);
    let dump = dump.bytes().await.unwrap();
    let task = rpc(&base, "task.create", json!([session, "restore", "dry run"])).await;
    let task = task.as_str().unwrap();
    let put =
        |body: Vec<u8>| http().put(format!("{url}?session_id={session}&task_id={task}&dry_run=true")).body(body).send();
    assert_eq!(put(dump.to_vec()).await.unwrap().status(), 200);
    assert_eq!(rpc(&base, "task.get_status", json!([session, task])).await, "success");

    // A broken one answers 200 too; the failure is the task's.
    let task = rpc(&base, "task.create", json!([session, "restore", "broken"])).await;
    let task = task.as_str().unwrap();
    let answer = http()
        .put(format!("{url}?session_id={session}&task_id={task}&dry_run=true"))
        .body(dump[..dump.len() / 3].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(rpc(&base, "task.get_status", json!([session, task])).await, "failure");
    let error = rpc(&base, "task.get_error_info", json!([session, task])).await;
    assert_eq!(error[0], "INTERNAL_ERROR");
    assert!(error[1].as_str().unwrap().contains("truncated"), "{error}");
}
