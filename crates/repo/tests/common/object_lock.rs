//! S3 object lock seen from outside: a bucket created with object lock enabled and version
//! deletes signed by curl (`--aws-sigv4`), an independent client, that the server must refuse
//! while a retention holds.

use std::process::Command;

/// One signed S3 request with curl (`--aws-sigv4`); returns (status, response headers).
pub fn curl(method: &str, url: &str, headers: &[&str]) -> (u16, String) {
    let mut command = Command::new("curl");
    command.args(["-sS", "-o", "/dev/null", "-D", "-", "-w", "%{http_code}", "-X", method]);
    if method == "HEAD" {
        command.arg("-I");
    }
    command.args(["--aws-sigv4", "aws:amz:us-east-1:s3", "--user"]).arg(format!(
        "{}:{}",
        super::S3_ACCESS_KEY,
        super::S3_SECRET_KEY
    ));
    for header in headers {
        command.args(["-H", header]);
    }
    let output = command.arg(url).output().expect("run curl");
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let (head, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.trim().parse().unwrap_or(0), head.to_string())
}

/// The version id of the current version of `key` in `bucket`.
pub fn version_id(endpoint: &str, bucket: &str, key: &str) -> String {
    let (status, headers) = curl("HEAD", &format!("{endpoint}/{bucket}/{key}"), &[]);
    assert_eq!(status, 200, "HEAD {key}: {headers}");
    headers
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("x-amz-version-id:").map(|v| v.trim().to_string()))
        .unwrap_or_else(|| panic!("no version id for {key}: {headers}"))
}

pub fn delete_version(endpoint: &str, bucket: &str, key: &str) -> u16 {
    let version = version_id(endpoint, bucket, key);
    curl("DELETE", &format!("{endpoint}/{bucket}/{key}?versionId={version}"), &[]).0
}

/// A fresh bucket created with object lock enabled.
pub fn object_lock_bucket(endpoint: &str) -> String {
    let bucket = format!("xv-lock-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let (status, headers) = curl("PUT", &format!("{endpoint}/{bucket}"), &["x-amz-bucket-object-lock-enabled: true"]);
    assert_eq!(status, 200, "create a bucket with object lock: {headers}");
    bucket
}
