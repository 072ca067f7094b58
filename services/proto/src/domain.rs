//! Validated domain types, built from wire messages with `TryFrom`.
//!
//! Validation happens here and only here: a handler that holds a domain value can trust it.
//! Every error names the field (for nested fields, a path such as `items[2].sku`) and becomes
//! `INVALID_ARGUMENT` through `From<ValidationError> for tonic::Status`.

use std::fmt;

use crate::{inventory::v1 as inv, order::v1 as ord};

/// Longest accepted `request_id`, in bytes.
pub const MAX_REQUEST_ID_LEN: usize = 128;
/// Longest accepted sku, in bytes.
pub const MAX_SKU_LEN: usize = 64;
/// Longest accepted customer or order id, in bytes.
pub const MAX_ID_LEN: usize = 128;
/// Largest quantity one deduction, release or restock may move.
pub const MAX_QUANTITY: i64 = 1_000_000;
/// Largest absolute stock level `SetStock` accepts.
pub const MAX_STOCK: i64 = 1_000_000_000;
/// Most items one order may hold.
pub const MAX_ITEMS: usize = 50;
/// Largest page `ListOrders` returns.
pub const MAX_PAGE_SIZE: u32 = 100;
/// Page size used when the request leaves it at 0.
pub const DEFAULT_PAGE_SIZE: u32 = 20;
/// Longest accepted page token, in bytes.
pub const MAX_PAGE_TOKEN_LEN: usize = 256;

/// A request field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid field `{field}`: {reason}")]
pub struct ValidationError {
    /// Path of the offending field, e.g. `items[2].quantity`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ValidationError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }
}

impl From<ValidationError> for tonic::Status {
    fn from(err: ValidationError) -> Self {
        tonic::Status::invalid_argument(err.to_string())
    }
}

/// `true` for the characters allowed in identifiers: ASCII letters, digits and `-_.:/`.
fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/')
}

fn check_id(field: &str, value: &str, max: usize) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(ValidationError::new(field, format!("must be at most {max} bytes, got {}", value.len())));
    }
    if let Some(bad) = value.chars().find(|c| !is_id_char(*c)) {
        return Err(ValidationError::new(
            field,
            format!("contains {bad:?}; only ASCII letters, digits and -_.:/ are allowed"),
        ));
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$meta:meta])* $name:ident, $max:expr) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Validates `value`, reporting errors against `field`.
            pub fn parse(field: &str, value: impl Into<String>) -> Result<Self, ValidationError> {
                let value = value.into();
                check_id(field, &value, $max)?;
                Ok(Self(value))
            }

            /// The validated string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_id!(
    /// A client-chosen idempotency key (AIP-155).
    RequestId,
    MAX_REQUEST_ID_LEN
);
string_id!(
    /// A stock keeping unit.
    Sku,
    MAX_SKU_LEN
);
string_id!(
    /// The customer an order belongs to.
    CustomerId,
    MAX_ID_LEN
);
string_id!(
    /// An order's id (server-assigned).
    OrderId,
    MAX_ID_LEN
);

/// A positive quantity moved by one call: `1..=MAX_QUANTITY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quantity(i64);

impl Quantity {
    /// Validates `value`, reporting errors against `field`.
    pub fn parse(field: &str, value: i64) -> Result<Self, ValidationError> {
        if value <= 0 {
            return Err(ValidationError::new(field, format!("must be greater than 0, got {value}")));
        }
        if value > MAX_QUANTITY {
            return Err(ValidationError::new(field, format!("must be at most {MAX_QUANTITY}, got {value}")));
        }
        Ok(Self(value))
    }

    /// The validated value.
    pub fn get(self) -> i64 {
        self.0
    }
}

/// An absolute stock level: `0..=MAX_STOCK`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StockLevel(i64);

impl StockLevel {
    /// Validates `value`, reporting errors against `field`.
    pub fn parse(field: &str, value: i64) -> Result<Self, ValidationError> {
        if !(0..=MAX_STOCK).contains(&value) {
            return Err(ValidationError::new(field, format!("must be within 0..={MAX_STOCK}, got {value}")));
        }
        Ok(Self(value))
    }

    /// The validated value.
    pub fn get(self) -> i64 {
        self.0
    }
}

/// Take `quantity` of `sku`, once per `request_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeductStock {
    /// Idempotency key.
    pub request_id: RequestId,
    /// What to take.
    pub sku: Sku,
    /// How much to take.
    pub quantity: Quantity,
}

impl TryFrom<inv::DeductStockRequest> for DeductStock {
    type Error = ValidationError;
    fn try_from(r: inv::DeductStockRequest) -> Result<Self, Self::Error> {
        Ok(Self {
            request_id: RequestId::parse("request_id", r.request_id)?,
            sku: Sku::parse("sku", r.sku)?,
            quantity: Quantity::parse("quantity", r.quantity)?,
        })
    }
}

/// Give back what the deduction `request_id` took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseStock {
    /// The deduction's idempotency key.
    pub request_id: RequestId,
    /// Must match the deduction's sku.
    pub sku: Sku,
    /// Must match the deduction's quantity.
    pub quantity: Quantity,
}

impl TryFrom<inv::ReleaseStockRequest> for ReleaseStock {
    type Error = ValidationError;
    fn try_from(r: inv::ReleaseStockRequest) -> Result<Self, Self::Error> {
        Ok(Self {
            request_id: RequestId::parse("request_id", r.request_id)?,
            sku: Sku::parse("sku", r.sku)?,
            quantity: Quantity::parse("quantity", r.quantity)?,
        })
    }
}

impl TryFrom<inv::GetStockRequest> for Sku {
    type Error = ValidationError;
    fn try_from(r: inv::GetStockRequest) -> Result<Self, Self::Error> {
        Sku::parse("sku", r.sku)
    }
}

/// Set the absolute stock level of a sku.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetStock {
    /// The sku, created if missing.
    pub sku: Sku,
    /// The new level.
    pub quantity: StockLevel,
}

impl TryFrom<inv::SetStockRequest> for SetStock {
    type Error = ValidationError;
    fn try_from(r: inv::SetStockRequest) -> Result<Self, Self::Error> {
        Ok(Self { sku: Sku::parse("sku", r.sku)?, quantity: StockLevel::parse("quantity", r.quantity)? })
    }
}

/// Add stock to an existing sku.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restock {
    /// The sku; must exist.
    pub sku: Sku,
    /// How much to add.
    pub quantity: Quantity,
}

impl TryFrom<inv::RestockRequest> for Restock {
    type Error = ValidationError;
    fn try_from(r: inv::RestockRequest) -> Result<Self, Self::Error> {
        Ok(Self { sku: Sku::parse("sku", r.sku)?, quantity: Quantity::parse("quantity", r.quantity)? })
    }
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OrderLine {
    /// What.
    pub sku: Sku,
    /// How many.
    pub quantity: Quantity,
}

impl From<&OrderLine> for ord::OrderItem {
    fn from(line: &OrderLine) -> Self {
        ord::OrderItem { sku: line.sku.to_string(), quantity: line.quantity.get() }
    }
}

impl From<&OrderLine> for crate::events::v1::OrderLine {
    fn from(line: &OrderLine) -> Self {
        crate::events::v1::OrderLine { sku: line.sku.to_string(), quantity: line.quantity.get() }
    }
}

/// Validates an order's lines given as `(sku, quantity)`: `1..=MAX_ITEMS` of them, each a
/// valid sku and quantity; errors name `field[i].sku` or `field[i].quantity`.
pub fn parse_lines(
    field: &str,
    lines: impl ExactSizeIterator<Item = (String, i64)>,
) -> Result<Vec<OrderLine>, ValidationError> {
    if lines.len() == 0 {
        return Err(ValidationError::new(field, "must hold at least one item"));
    }
    if lines.len() > MAX_ITEMS {
        return Err(ValidationError::new(
            field,
            format!("must hold at most {MAX_ITEMS} items, got {}", lines.len()),
        ));
    }
    lines
        .enumerate()
        .map(|(i, (sku, quantity))| {
            Ok(OrderLine {
                sku: Sku::parse(&format!("{field}[{i}].sku"), sku)?,
                quantity: Quantity::parse(&format!("{field}[{i}].quantity"), quantity)?,
            })
        })
        .collect()
}

/// The lines of an event (`OrderPlaced`, `StockReleaseRequested`), validated like an order's.
pub fn event_lines(lines: Vec<crate::events::v1::OrderLine>) -> Result<Vec<OrderLine>, ValidationError> {
    parse_lines("lines", lines.into_iter().map(|l| (l.sku, l.quantity)))
}

/// Create an order, once per `request_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateOrder {
    /// Idempotency key.
    pub request_id: RequestId,
    /// Who orders.
    pub customer_id: CustomerId,
    /// `1..=MAX_ITEMS` lines.
    pub items: Vec<OrderLine>,
}

impl TryFrom<ord::CreateOrderRequest> for CreateOrder {
    type Error = ValidationError;
    fn try_from(r: ord::CreateOrderRequest) -> Result<Self, Self::Error> {
        let request_id = RequestId::parse("request_id", r.request_id)?;
        let customer_id = CustomerId::parse("customer_id", r.customer_id)?;
        let items = parse_lines("items", r.items.into_iter().map(|i| (i.sku, i.quantity)))?;
        Ok(Self { request_id, customer_id, items })
    }
}

impl TryFrom<ord::GetOrderRequest> for OrderId {
    type Error = ValidationError;
    fn try_from(r: ord::GetOrderRequest) -> Result<Self, Self::Error> {
        OrderId::parse("order_id", r.order_id)
    }
}

impl TryFrom<ord::CancelOrderRequest> for OrderId {
    type Error = ValidationError;
    fn try_from(r: ord::CancelOrderRequest) -> Result<Self, Self::Error> {
        OrderId::parse("order_id", r.order_id)
    }
}

impl TryFrom<ord::WatchOrderRequest> for OrderId {
    type Error = ValidationError;
    fn try_from(r: ord::WatchOrderRequest) -> Result<Self, Self::Error> {
        OrderId::parse("order_id", r.order_id)
    }
}

/// One page of a customer's orders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListOrders {
    /// Whose orders.
    pub customer_id: CustomerId,
    /// `1..=MAX_PAGE_SIZE`.
    pub page_size: u32,
    /// Where the previous page stopped.
    pub page_token: Option<String>,
}

impl TryFrom<ord::ListOrdersRequest> for ListOrders {
    type Error = ValidationError;
    fn try_from(r: ord::ListOrdersRequest) -> Result<Self, Self::Error> {
        let customer_id = CustomerId::parse("customer_id", r.customer_id)?;
        let page_size = match r.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n < 0 => {
                return Err(ValidationError::new("page_size", format!("must not be negative, got {n}")));
            }
            n => u32::try_from(n).unwrap_or(u32::MAX),
        };
        if page_size > MAX_PAGE_SIZE {
            return Err(ValidationError::new(
                "page_size",
                format!("must be at most {MAX_PAGE_SIZE}, got {page_size}"),
            ));
        }
        let page_token = if r.page_token.is_empty() {
            None
        } else {
            if r.page_token.len() > MAX_PAGE_TOKEN_LEN || !r.page_token.chars().all(is_id_char) {
                return Err(ValidationError::new("page_token", "is not a token this server issued"));
            }
            Some(r.page_token)
        };
        Ok(Self { customer_id, page_size, page_token })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use proptest::prelude::*;

    use super::*;

    fn deduct(request_id: &str, sku: &str, quantity: i64) -> inv::DeductStockRequest {
        inv::DeductStockRequest { request_id: request_id.into(), sku: sku.into(), quantity }
    }

    #[test]
    fn valid_deduction_converts() {
        let d = DeductStock::try_from(deduct("r-1", "SKU-1", 3)).unwrap();
        assert_eq!(d.sku.as_str(), "SKU-1");
        assert_eq!(d.quantity.get(), 3);
    }

    #[test]
    fn empty_sku_is_rejected_naming_the_field() {
        let err = DeductStock::try_from(deduct("r-1", "", 3)).unwrap_err();
        assert_eq!(err.field, "sku");
    }

    #[test]
    fn zero_and_negative_quantities_are_rejected() {
        for q in [0, -1, i64::MIN] {
            let err = DeductStock::try_from(deduct("r-1", "a", q)).unwrap_err();
            assert_eq!(err.field, "quantity");
        }
    }

    #[test]
    fn oversized_request_id_is_rejected() {
        let err = DeductStock::try_from(deduct(&"x".repeat(MAX_REQUEST_ID_LEN + 1), "a", 1)).unwrap_err();
        assert_eq!(err.field, "request_id");
    }

    #[test]
    fn too_many_items_are_rejected() {
        let item = ord::OrderItem { sku: "a".into(), quantity: 1 };
        let req = ord::CreateOrderRequest {
            request_id: "r".into(),
            customer_id: "c".into(),
            items: vec![item; MAX_ITEMS + 1],
        };
        assert_eq!(CreateOrder::try_from(req).unwrap_err().field, "items");
    }

    #[test]
    fn bad_item_is_named_by_index() {
        let req = ord::CreateOrderRequest {
            request_id: "r".into(),
            customer_id: "c".into(),
            items: vec![
                ord::OrderItem { sku: "a".into(), quantity: 1 },
                ord::OrderItem { sku: "b".into(), quantity: 0 },
            ],
        };
        assert_eq!(CreateOrder::try_from(req).unwrap_err().field, "items[1].quantity");
    }

    #[test]
    fn page_size_zero_means_default_and_too_big_is_rejected() {
        let ok = ListOrders::try_from(ord::ListOrdersRequest {
            customer_id: "c".into(),
            page_size: 0,
            page_token: "".into(),
        })
        .unwrap();
        assert_eq!(ok.page_size, DEFAULT_PAGE_SIZE);
        let err = ListOrders::try_from(ord::ListOrdersRequest {
            customer_id: "c".into(),
            page_size: 101,
            page_token: "".into(),
        })
        .unwrap_err();
        assert_eq!(err.field, "page_size");
    }

    #[test]
    fn validation_error_maps_to_invalid_argument() {
        let status: tonic::Status = ValidationError::new("sku", "must not be empty").into();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("sku"));
    }

    proptest! {
        #[test]
        fn arbitrary_deductions_never_panic_and_errors_name_a_field(
            request_id in ".{0,200}", sku in ".{0,100}", quantity in any::<i64>()
        ) {
            match DeductStock::try_from(deduct(&request_id, &sku, quantity)) {
                Ok(d) => prop_assert!(d.quantity.get() > 0),
                Err(e) => prop_assert!(["request_id", "sku", "quantity"].contains(&e.field.as_str())),
            }
        }

        #[test]
        fn arbitrary_orders_never_panic(
            items in proptest::collection::vec((".{0,80}", any::<i64>()), 0..60),
            customer_id in ".{0,150}",
        ) {
            let req = ord::CreateOrderRequest {
                request_id: "r".into(),
                customer_id,
                items: items.into_iter().map(|(sku, quantity)| ord::OrderItem { sku, quantity }).collect(),
            };
            let _ = CreateOrder::try_from(req);
        }
    }
}
