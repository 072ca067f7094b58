//! Standard status codes for what goes wrong on the wire, before a handler runs.
//!
//! - **Headers.** A request whose header list is larger than [`MAX_HEADER_LIST_BYTES`] is
//!   answered `RESOURCE_EXHAUSTED` (what gRPC's C core answers for oversized metadata) without
//!   reaching the service. HTTP/2 itself is given the larger [`H2_MAX_HEADER_LIST_BYTES`]:
//!   hyper's default of 16 KiB made h2 answer HTTP 431, which clients read as `UNKNOWN`, and
//!   a block four times that size made it send GOAWAY, failing every other call on the
//!   connection. Only beyond the HTTP/2 limit does h2 answer 431 (still a single stream), and
//!   beyond four times it the connection is closed.
//! - **Undecodable messages.** tonic answers a request it cannot decode with `INTERNAL`
//!   (tonic-prost: "failed to decode Protobuf message", a bad compression flag, a truncated
//!   message), which the gRPC spec reserves for server bugs, and a message over the decoding
//!   limit (4 MiB) with `OUT_OF_RANGE`. These answers are rewritten to `INVALID_ARGUMENT` and
//!   `RESOURCE_EXHAUSTED`. They are recognised by tonic's own messages; this service's
//!   handlers never send those, and `tests/grpc.rs` in inventory pins them against the real
//!   decoder.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use futures::future::{Either, Ready, ready};
use http::{HeaderMap, HeaderValue};
use tower::{Layer, Service};

/// Largest request header list accepted, in bytes, counted as HTTP/2 does (name + value + 32
/// per field) plus the path. A bearer token is about 1 KiB.
pub const MAX_HEADER_LIST_BYTES: usize = 16 * 1024;

/// The HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE` the server advertises and h2 enforces. Between
/// [`MAX_HEADER_LIST_BYTES`] and this, a request gets a proper gRPC `RESOURCE_EXHAUSTED`.
pub const H2_MAX_HEADER_LIST_BYTES: u32 = 256 * 1024;

const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: http::HeaderName = http::HeaderName::from_static("grpc-message");

/// tonic's messages for a request it could not decode (sent as `INTERNAL`).
const UNDECODABLE: &[&str] = &[
    "failed to decode Protobuf message",
    "protocol error: received message with invalid compression flag",
    "Unexpected EOF decoding stream.",
];

/// tonic's message for a request over its decoding limit (sent as `OUT_OF_RANGE`).
const TOO_LARGE: &str = "Error, decoded message length too large";

/// The size of `req`'s header list as HTTP/2 counts it (RFC 9113 §6.5.2), path included.
pub fn header_list_size<B>(req: &http::Request<B>) -> usize {
    req.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + 32).sum::<usize>()
        + req.uri().path().len()
}

/// The code a trailers-only answer should carry instead of the one it has, if any.
fn corrected_code(headers: &HeaderMap) -> Option<tonic::Code> {
    let code = headers.get(&GRPC_STATUS)?;
    let message = headers.get(&GRPC_MESSAGE).map_or(&[][..], HeaderValue::as_bytes);
    match code.as_bytes() {
        b"13" if UNDECODABLE.iter().any(|p| starts_with_encoded(message, p)) => {
            Some(tonic::Code::InvalidArgument)
        }
        b"11" if starts_with_encoded(message, TOO_LARGE) => Some(tonic::Code::ResourceExhausted),
        _ => None,
    }
}

/// Whether a percent-encoded `grpc-message` starts with `prefix` once decoded.
fn starts_with_encoded(encoded: &[u8], prefix: &str) -> bool {
    let (mut at, mut want) = (encoded, prefix.as_bytes());
    while let Some((&expected, rest)) = want.split_first() {
        let (byte, consumed) = match at {
            [b'%', hi, lo, ..] => match (char::from(*hi).to_digit(16), char::from(*lo).to_digit(16)) {
                (Some(hi), Some(lo)) => (u8::try_from(hi * 16 + lo).unwrap_or(0), 3),
                _ => (b'%', 1),
            },
            [byte, ..] => (*byte, 1),
            [] => return false,
        };
        if byte != expected {
            return false;
        }
        (at, want) = (&at[consumed..], rest);
    }
    true
}

/// Tower layer applying the module's rules.
#[derive(Debug, Clone, Copy, Default)]
pub struct WireLayer;

impl<S> Layer<S> for WireLayer {
    type Service = WireService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        WireService { inner }
    }
}

/// See [`WireLayer`].
#[derive(Debug, Clone)]
pub struct WireService<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for WireService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    /// An oversized request is answered at once; anything else is the inner call, unboxed.
    type Future = Either<Ready<Result<Self::Response, Self::Error>>, Corrected<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let size = header_list_size(&req);
        if size > MAX_HEADER_LIST_BYTES {
            let status = tonic::Status::resource_exhausted(format!(
                "request headers are {size} bytes; the limit is {MAX_HEADER_LIST_BYTES}"
            ));
            return Either::Left(ready(Ok(status.into_http())));
        }
        Either::Right(Corrected { call: self.inner.call(req) })
    }
}

pin_project_lite::pin_project! {
    /// A call whose trailers-only answer gets its code corrected (see [`corrected_code`]).
    pub struct Corrected<F> {
        #[pin]
        call: F,
    }
}

impl<F, E> Future for Corrected<F>
where
    F: Future<Output = Result<http::Response<tonic::body::Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut out = std::task::ready!(self.project().call.poll(cx));
        if let Ok(resp) = &mut out
            && let Some(code) = corrected_code(resp.headers())
        {
            resp.headers_mut().insert(GRPC_STATUS, HeaderValue::from(i32::from(code)));
        }
        Poll::Ready(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: tonic::Status) -> HeaderMap {
        status.into_http::<tonic::body::Body>().headers().clone()
    }

    #[test]
    fn tonic_decode_errors_become_invalid_argument() {
        let undecodable = tonic::Status::internal(
            "failed to decode Protobuf message: DeductStockRequest.request_id: invalid string value: data is not UTF-8 encoded",
        );
        assert_eq!(corrected_code(&answer(undecodable)), Some(tonic::Code::InvalidArgument));
        let eof = tonic::Status::internal("Unexpected EOF decoding stream.");
        assert_eq!(corrected_code(&answer(eof)), Some(tonic::Code::InvalidArgument));
    }

    #[test]
    fn a_message_over_the_limit_becomes_resource_exhausted() {
        let large = tonic::Status::out_of_range(
            "Error, decoded message length too large: found 5242885 bytes, the limit is: 4194304 bytes",
        );
        assert_eq!(corrected_code(&answer(large)), Some(tonic::Code::ResourceExhausted));
    }

    #[test]
    fn other_answers_keep_their_code() {
        for status in [
            tonic::Status::internal("internal error"),
            tonic::Status::out_of_range("restocking sku `a` would exceed the maximum stock level"),
            tonic::Status::invalid_argument("failed to decode Protobuf message"),
        ] {
            assert_eq!(corrected_code(&answer(status.clone())), None, "{status:?}");
        }
        assert_eq!(corrected_code(&HeaderMap::new()), None, "a response with a body and trailers");
    }

    #[test]
    fn percent_encoded_messages_are_compared_decoded() {
        assert!(starts_with_encoded(b"failed%20to%20decode%20x", "failed to decode"));
        assert!(!starts_with_encoded(b"failed%20to", "failed to decode"));
        assert!(starts_with_encoded(b"%zz", "%z"), "an invalid escape is read as it is");
        assert!(starts_with_encoded(b"a%", "a"));
    }

    #[test]
    fn header_list_size_counts_like_http2() {
        let mut req = http::Request::new(());
        *req.uri_mut() = http::Uri::from_static("/a.B/C");
        req.headers_mut().insert("te", HeaderValue::from_static("trailers"));
        assert_eq!(header_list_size(&req), 2 + 8 + 32 + "/a.B/C".len());
    }
}
