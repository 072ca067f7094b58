//! Ferry's gRPC contracts.
//!
//! - [`inventory::v1`] and [`order::v1`]: code generated from the versioned `.proto` files in
//!   `proto/` (compiled by `protox`, so no system `protoc` is needed).
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for server reflection.
//! - [`domain`]: validated domain types. Wire messages become domain values through `TryFrom`,
//!   which is the one place where input is validated; a failure names the offending field and
//!   maps to `INVALID_ARGUMENT`.

pub mod domain;

/// Generated code for `ferry.inventory.*`.
pub mod inventory {
    /// `ferry.inventory.v1`.
    pub mod v1 {
        #![allow(missing_docs, clippy::all, clippy::unwrap_used)]
        tonic::include_proto!("ferry.inventory.v1");
    }
}

/// Generated code for `ferry.order.*`.
pub mod order {
    /// `ferry.order.v1`.
    pub mod v1 {
        #![allow(missing_docs, clippy::all, clippy::unwrap_used)]
        tonic::include_proto!("ferry.order.v1");
    }
}

/// Encoded `FileDescriptorSet` of every Ferry proto, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ferry_descriptor.bin"));
