//! schemathesis (PyPI) fuzzes a live server from its own `/api/openapi.json` with an admin
//! token: no answer may be a 5xx, and every documented answer must match its schema. A
//! short, seeded run for CI; skipped, loudly, where schemathesis is not installed.

mod common;

use std::process::Stdio;

use common::start;

/// Operations left out: adding a pool or a repository makes the server connect to the
/// address or open the path in the request, and generated ones would reach outside.
const EXCLUDED: &[&str] = &["POST /api/pools", "POST /api/repositories"];

/// Loaded by schemathesis (SCHEMATHESIS_HOOKS). Its own token survives (schemathesis
/// learns ids from listings and would revoke it, leaving only 401s to test), and job bodies
/// lose what a run would act on outside the server (webhook, email, shell commands), should
/// a generated job ever run.
const HOOKS: &str = r#"
import os
import schemathesis

OWN_TOKEN_ID = os.environ["OWN_TOKEN_ID"]

@schemathesis.hook
def before_call(ctx, case, **kwargs):
    if case.operation.path == "/api/tokens/{id}" and (case.path_parameters or {}).get("id") == OWN_TOKEN_ID:
        case.path_parameters["id"] = "00000000-0000-0000-0000-000000000000"
    if not case.operation.path.startswith("/api/jobs") or not isinstance(case.body, dict):
        return
    notifications = case.body.get("notifications")
    if isinstance(notifications, dict):
        notifications["webhook"] = None
        notifications["email"] = []
    settings = case.body.get("settings")
    if isinstance(settings, dict):
        settings["pre_command"] = None
        settings["post_command"] = None
"#;

fn schemathesis_installed() -> bool {
    std::process::Command::new("st").arg("--version").output().is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    if !schemathesis_installed() {
        eprintln!(
            "\n*** SKIPPED schemathesis_finds_no_server_error_and_no_schema_violation: the `st` command \
             (PyPI schemathesis) is not installed; scripts/setup.sh installs it ***\n"
        );
        return;
    }
    let server = start().await;
    let token = server.token("admin").await;
    let tokens = server.get_json("/api/tokens", &token).await;
    let own = tokens.as_array().unwrap().iter().find(|t| token.starts_with(t["prefix"].as_str().unwrap()));
    let own_token_id = own.expect("the token is listed")["id"].as_str().unwrap().to_owned();
    let work = tempfile::tempdir().unwrap();
    let hooks = work.path().join("hooks.py");
    std::fs::write(&hooks, HOOKS).unwrap();

    let mut command = tokio::process::Command::new("st");
    command
        .arg("run")
        .arg(format!("{}/api/openapi.json", server.url))
        .args(["--checks", "not_a_server_error,response_schema_conformance"])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        // Without this it also makes up session cookies, which the server checks first.
        .args(["--generation-with-security-parameters", "false"])
        .args(["--tls-verify", "false"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", "10", "--max-time", "90", "--seed", "13", "--workers", "2"])
        .args(["--request-timeout", "10", "--generation-database", "none", "--no-color"])
        // A connection dropped at the TLS layer (seen once in a fresh-clone CI run: "EOF
        // occurred in violation of protocol" on one request, not reproduced) is tried
        // again; a 5xx or a schema violation is an answer, which no retry hides.
        .args(["--request-retries", "2"])
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("PYTHONPATH", work.path())
        .env("OWN_TOKEN_ID", &own_token_id)
        .current_dir(work.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for operation in EXCLUDED {
        command.args(["--exclude-name", operation]);
    }
    let output = command.output().await.expect("st runs");
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "schemathesis found problems:\n{report}");
    // A run that tested nothing would pass too: make sure it exercised the API with valid
    // credentials (only the login, called with made-up passwords, may answer nothing but 401).
    assert!(report.contains("passed") && !report.contains("No operations"), "{report}");
    assert!(!report.contains("operations returned only 401/403"), "credentials were lost:\n{report}");
    println!("{report}");
    server.server.shutdown().await;
}
