//! Async XenAPI client: JSON-RPC or XML-RPC (chosen automatically or forced), sessions with
//! transparent re-login, `Async.*` tasks, typed record helpers and xapi's HTTP transfer
//! handlers, over rustls (system roots, a given CA, a pinned fingerprint, or insecure when
//! asked).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use xenvault_xapi::{Client, ServerTrust};
//! let client = Client::builder("https://pool-master")
//!     .tls(ServerTrust::pin_sha256_hex("AB:CD:...")?)
//!     .build()?;
//! client.login_with_password("root", "secret").await?;
//! let vms = client.get_all_records("VM").await?;
//! # Ok(()) }
//! ```

mod client;
mod error;
mod records;
mod reference;
mod task;
mod tls;
mod transfer;

pub use client::{Client, ClientBuilder, ORIGINATOR, Transport};
pub use error::Error;
pub use records::{Event, EventBatch, EventOperation};
pub use reference::Ref;
pub use task::{TaskStatus, decode_task_result};
pub use tls::{ServerTrust, fingerprint_sha256};
pub use tokio_util::sync::CancellationToken;
pub use transfer::{Compression, DiskFormat, Download, ImportTarget, VmImportOptions};
pub use xenvault_xapi_wire::{self as wire, Failure, Value};
