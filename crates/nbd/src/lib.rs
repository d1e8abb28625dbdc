//! NBD (Network Block Device) client and server with TLS, written against the protocol spec
//! (NetworkBlockDevice/nbd doc/proto.md) and against what xapi-nbd really does.
//!
//! - [`client`]: one connection ([`Client`]) with pipelined reads, structured replies and block
//!   status; [`MultiReader`] spreads reads of many ranges over several connections.
//! - [`server`]: serves any [`Export`] found by an [`ExportResolver`], either exactly like xapi
//!   ([`Behaviour::XapiCompat`]) or with the modern options ([`Behaviour::Modern`]).

pub mod client;
mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod multi;
pub mod proto;
pub mod server;
mod stream;
mod tls;

pub use client::{BlockSize, Client, ConnectOptions, ExportInfo, Extent};
pub use error::{Error, Result};
pub use multi::{MultiReader, MultiReaderConfig};
pub use server::{Behaviour, Export, ExportResolver, Refusal, Server, ServerConfig, serve};
pub use tls::TlsOptions;
pub use xenvault_tls::ServerTrust;
