//! Ferry's gRPC contracts.
//!
//! - [`inventory::v1`], [`order::v1`] and [`events::v1`] (the saga's events on the broker): code generated from the versioned `.proto` files in
//!   `proto/` (compiled by `protox`, so no system `protoc` is needed).
//! - [`INVENTORY_DESCRIPTOR_SET`], [`ORDER_DESCRIPTOR_SET`]: each service's encoded descriptors,
//!   for its server's reflection; [`FILE_DESCRIPTOR_SET`] holds both.
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

/// Generated code for `ferry.events.*`: the saga's events on the message broker.
pub mod events {
    /// `ferry.events.v1`.
    pub mod v1 {
        #![allow(missing_docs, clippy::all, clippy::unwrap_used)]
        tonic::include_proto!("ferry.events.v1");
    }
}

/// Encoded `FileDescriptorSet` of every Ferry proto, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ferry_descriptor.bin"));

/// Encoded `FileDescriptorSet` of `ferry.inventory.v1` alone (the inventory server's reflection).
pub const INVENTORY_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/inventory_descriptor.bin"));

/// Encoded `FileDescriptorSet` of `ferry.order.v1` alone (the order server's reflection).
pub const ORDER_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/order_descriptor.bin"));
