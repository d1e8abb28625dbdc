//! What the command line takes from the environment. The libraries read none: this module
//! turns the usual variables into their options.

use anyhow::{Result, anyhow};
use std::path::PathBuf;
use xenvault_repo::backend::BackendOptions;

/// A variable that is set and not empty.
pub fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The first of `names` that is set.
fn first(names: &[&str]) -> Option<String> {
    names.iter().find_map(|name| var(name))
}

/// Storage options from the AWS, Azure and SMB variables and this user's cache directory; flags
/// override them afterwards. Profile files, SSO and instance roles stay with the S3
/// credential chain of the backend.
pub fn backend_options() -> BackendOptions {
    // A connection string carries the account and key: the separate variables would override it.
    let connection_string = var("AZURE_STORAGE_CONNECTION_STRING");
    let separate = |name| if connection_string.is_some() { None } else { var(name) };
    BackendOptions {
        s3_endpoint: first(&["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]),
        s3_region: first(&["AWS_REGION", "AWS_DEFAULT_REGION"]),
        s3_access_key: var("AWS_ACCESS_KEY_ID"),
        s3_secret_key: var("AWS_SECRET_ACCESS_KEY"),
        s3_session_token: var("AWS_SESSION_TOKEN"),
        azure_account: separate("AZURE_STORAGE_ACCOUNT"),
        azure_key: separate("AZURE_STORAGE_KEY"),
        azure_sas_token: var("AZURE_STORAGE_SAS_TOKEN"),
        azure_endpoint: var("AZURE_STORAGE_ENDPOINT"),
        azure_connection_string: connection_string,
        smb_user: var("XENVAULT_SMB_USER"),
        smb_password: var("XENVAULT_SMB_PASSWORD"),
        smb_password_file: var("XENVAULT_SMB_PASSWORD_FILE").map(PathBuf::from),
        smb_domain: var("XENVAULT_SMB_DOMAIN"),
        cache_dir: cache_dir(),
        ..BackendOptions::default()
    }
}

/// `$XENVAULT_CACHE_DIR`, else `$XDG_CACHE_HOME/xenvault`, else `~/.cache/xenvault`; none
/// (no cache) when even HOME is unset.
fn cache_dir() -> Option<PathBuf> {
    var("XENVAULT_CACHE_DIR").map(PathBuf::from).or_else(|| Some(xdg_dir("XDG_CACHE_HOME", ".cache")?.join("xenvault")))
}

/// `$XDG_CONFIG_HOME/xenvault/config.toml`, else `~/.config/xenvault/config.toml`.
pub fn config_path() -> Result<PathBuf> {
    let base = xdg_dir("XDG_CONFIG_HOME", ".config")
        .ok_or_else(|| anyhow!("neither XDG_CONFIG_HOME nor HOME is set: give --config"))?;
    Ok(base.join("xenvault").join("config.toml"))
}

/// `$xdg_var`, else `$HOME/home_subdir`.
fn xdg_dir(xdg_var: &str, home_subdir: &str) -> Option<PathBuf> {
    var(xdg_var).map(PathBuf::from).or_else(|| var("HOME").map(|home| PathBuf::from(home).join(home_subdir)))
}

/// `XENVAULT_POOL_PASSWORD`: overrides the stored password of the pool logged in to.
pub fn pool_password() -> Option<String> {
    var("XENVAULT_POOL_PASSWORD")
}
