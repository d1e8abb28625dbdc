//! Every API operation (read from the published OpenAPI document, so new ones are covered)
//! refuses a request without credentials and a role weaker than the one it declares; web
//! sessions need their CSRF token to change anything.

mod common;

use common::{ADMIN_PASSWORD, assert_error, start};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// (method, path with its parameters filled, least role) of every operation.
fn operations(doc: &Value) -> Vec<(Method, String, Option<String>)> {
    let mut found = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            let Ok(method) = method.to_uppercase().parse::<Method>() else { continue };
            let filled =
                path.split('/').map(|s| if s.starts_with('{') { "x" } else { s }).collect::<Vec<_>>().join("/");
            let role = operation.get("security").and_then(|s| s.as_array()).map(|requirements| {
                let roles: Vec<&str> = requirements
                    .iter()
                    .flat_map(|r| r.as_object().unwrap().values())
                    .flat_map(|scopes| scopes.as_array().unwrap())
                    .map(|s| s.as_str().unwrap())
                    .collect();
                assert!(!roles.is_empty(), "{method} {path} declares security without a role");
                assert!(
                    roles.iter().all(|r| *r == roles[0]),
                    "{method} {path}: schemes disagree on the role: {roles:?}"
                );
                roles[0].to_owned()
            });
            found.push((method, filled, role));
        }
    }
    found
}

#[tokio::test]
async fn every_operation_refuses_no_token_and_weaker_roles() {
    let server = start().await;
    let doc: Value = server.request(Method::GET, "/api/openapi.json").send().await.unwrap().json().await.unwrap();
    let read_only = server.token("read-only").await;
    let operator = server.token("operator").await;
    let operations = operations(&doc);
    assert!(operations.len() >= 10, "only {} operations", operations.len());
    let public: Vec<_> =
        operations.iter().filter(|(_, _, role)| role.is_none()).map(|(m, p, _)| format!("{m} {p}")).collect();
    assert_eq!(public, ["POST /api/auth/login"], "only the login may be called without credentials");

    let mut admin_only = 0;
    for (method, path, role) in &operations {
        let Some(role) = role else { continue };
        let response = server.request(method.clone(), path).send().await.unwrap();
        assert_eq!(
            response.headers().get("www-authenticate").map(|v| v.to_str().unwrap()),
            Some("Bearer"),
            "{method} {path}"
        );
        assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
        let response = server.with_token(method.clone(), path, "xvt_not-a-token").send().await.unwrap();
        assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
        for (token, weaker_than) in [(&read_only, ["operator", "admin"].as_slice()), (&operator, ["admin"].as_slice())]
        {
            if weaker_than.contains(&role.as_str()) {
                let response = server.with_token(method.clone(), path, token).send().await.unwrap();
                let message = assert_error(response, StatusCode::FORBIDDEN, "forbidden").await;
                assert!(message.contains(&format!("needs the {role} role")), "{message}");
            }
        }
        admin_only += usize::from(role == "admin");
    }
    assert!(admin_only >= 5, "{admin_only} admin operations");
    server.server.shutdown().await;
}

#[tokio::test]
async fn web_sessions_are_strict_cookies_and_need_the_csrf_token_to_change_things() {
    let server = start().await;
    let wrong = server.login("admin", "not the password").await.err().expect("wrong password refused");
    assert_error(wrong, StatusCode::UNAUTHORIZED, "unauthorized").await;

    let session = server.login("admin", ADMIN_PASSWORD).await.unwrap_or_else(|_| panic!("login"));
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(session.set_cookie.contains(attribute), "{}", session.set_cookie);
    }
    let me: Value = server
        .request(Method::GET, "/api/auth/me")
        .header("cookie", &session.cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!((me["user"].as_str(), me["role"].as_str()), (Some("admin"), Some("admin")));

    let create = || server.request(Method::POST, "/api/tokens").header("cookie", &session.cookie);
    let body = json!({"name": "ci", "role": "operator"});
    assert_error(create().json(&body).send().await.unwrap(), StatusCode::FORBIDDEN, "csrf").await;
    let forged = create().header("x-csrf-token", "guess").json(&body).send().await.unwrap();
    assert_error(forged, StatusCode::FORBIDDEN, "csrf").await;
    let made = create().header("x-csrf-token", &session.csrf).json(&body).send().await.unwrap();
    assert_eq!(made.status(), StatusCode::CREATED);
    let made: Value = made.json().await.unwrap();
    let secret = made["secret"].as_str().unwrap();
    assert!(secret.starts_with("xvt_"), "{secret}");

    // Listings never show the secret; the audit log names who did what.
    let admin = server.token("admin").await;
    let listed = server.get_json("/api/tokens", &admin).await.to_string();
    assert!(!listed.contains(secret), "{listed}");
    let audit = server.get_json("/api/audit", &admin).await;
    let actions: Vec<&str> = audit.as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    for action in ["login.failed", "login", "token.create"] {
        assert!(actions.contains(&action), "{actions:?}");
    }

    // A revoked token and a closed session stop working.
    let id = made["token"]["id"].as_str().unwrap();
    let revoked = server.with_token(Method::DELETE, &format!("/api/tokens/{id}"), &admin).send().await.unwrap();
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    let after = server.with_token(Method::GET, "/api/auth/me", secret).send().await.unwrap();
    assert_error(after, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let logout = server
        .request(Method::POST, "/api/auth/logout")
        .header("cookie", &session.cookie)
        .header("x-csrf-token", &session.csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), StatusCode::NO_CONTENT);
    let after = server.request(Method::GET, "/api/auth/me").header("cookie", &session.cookie).send().await.unwrap();
    assert_error(after, StatusCode::UNAUTHORIZED, "unauthorized").await;
    server.server.shutdown().await;
}

#[tokio::test]
async fn bad_bodies_and_parameters_are_json_errors() {
    let server = start().await;
    let admin = server.token("admin").await;
    let response = server
        .with_token(Method::POST, "/api/tokens", &admin)
        .body("{not json")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::BAD_REQUEST, "invalid").await;
    let response = server.with_token(Method::GET, "/api/audit?limit=lots", &admin).send().await.unwrap();
    assert_error(response, StatusCode::BAD_REQUEST, "invalid").await;
    let response = server.with_token(Method::DELETE, "/api/tokens/nope", &admin).send().await.unwrap();
    assert_error(response, StatusCode::NOT_FOUND, "not_found").await;
    server.server.shutdown().await;
}
