//! hotshard's S3 gateway (issue 34): the S3 protocol (s3s: SigV4, XML, errors) on hyper and
//! tokio, in front of a node or a cluster through the tokio client. It keeps no state of its
//! own: buckets, object entries and chunks are keys in hotshard (`layout`).

pub mod backend;
pub mod checksums;
pub mod credentials;
pub mod gateway;
pub mod layout;
pub mod limits;
pub mod multipart;
pub mod server;
pub mod sweep;

pub use credentials::{Credentials, KeysFrom};
pub use server::{spawn_gateway, GatewayConfig, DEFAULT_CHUNK_BYTES};
