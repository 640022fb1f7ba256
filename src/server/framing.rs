//! From bytes to a message, and what the caller hears when that fails.
//!
//! tonic answers a request that cannot be decoded with INTERNAL (a
//! truncated frame, a message that is not valid protobuf, invalid UTF-8 in
//! a string, nesting past prost's recursion limit) and an oversized one with
//! OUT_OF_RANGE. Those are the caller's mistakes: [`StrictCodec`] reports a
//! protobuf that does not decode as INVALID_ARGUMENT, and [`Framing`] turns
//! every other refusal made before a handler saw the request into
//! INVALID_ARGUMENT too, and logs it without its content. INTERNAL stays for
//! faults of the service itself.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tonic::Status;
use tonic::body::Body;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::codegen::{BoxFuture, Context, Poll, Service, http};
use tonic::server::NamedService;
use tonic_prost::ProstEncoder;

use crate::audit;
use crate::decision::FieldError;

/// The protobuf codec of `stepgate.v1`, whose decoder refuses what does not
/// decode as INVALID_ARGUMENT and a unary call carrying a second message.
#[derive(Debug, Clone, Copy)]
pub struct StrictCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for StrictCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for StrictCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder {
            decoded: false,
            _message: PhantomData,
        }
    }
}

/// Decodes the one message of a unary call.
#[derive(Debug)]
pub struct StrictDecoder<U> {
    decoded: bool,
    _message: PhantomData<U>,
}

impl<U: prost::Message + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        if std::mem::replace(&mut self.decoded, true) {
            return Err(invalid(&FieldError::new(
                "request",
                "carries a second message; a unary call carries exactly one",
            )));
        }
        // prost's message names the field path and what was wrong with it,
        // never the bytes themselves.
        U::decode(buf).map(Some).map_err(|e| {
            invalid(&FieldError::new(
                "request",
                format!("cannot be decoded: {e}"),
            ))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

fn invalid(err: &FieldError) -> Status {
    Status::invalid_argument(err.to_string())
}

/// Set by a handler once it holds a decoded request, so [`Framing`] can tell
/// the transport's refusals from the handler's own answers.
#[derive(Debug, Clone, Default)]
pub struct Reached(Arc<AtomicBool>);

impl Reached {
    /// Marks the request as having reached its handler.
    pub fn mark<T>(request: &tonic::Request<T>) {
        if let Some(reached) = request.extensions().get::<Self>() {
            reached.0.store(true, Ordering::Release);
        }
    }

    fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Wraps a generated gRPC service: a request refused before its handler
/// ran is answered with INVALID_ARGUMENT naming what was wrong (an
/// oversized message names `limits.max_request_bytes`), and logged. An
/// unknown method or an unsupported `grpc-encoding` keeps its
/// UNIMPLEMENTED, which tells a client what to change.
#[derive(Debug, Clone)]
pub struct Framing<S> {
    inner: S,
    max_request_bytes: usize,
}

impl<S> Framing<S> {
    /// `max_request_bytes` must be the limit the inner service enforces
    /// (`max_decoding_message_size`), so the message can name it.
    pub fn new(inner: S, max_request_bytes: usize) -> Self {
        Self {
            inner,
            max_request_bytes,
        }
    }
}

impl<S: NamedService> NamedService for Framing<S> {
    const NAME: &'static str = S::NAME;
}

/// The method of a `stepgate.v1` path, from a closed set so a log line never
/// carries a caller's text.
fn rpc_name(path: &str) -> &'static str {
    match path.rsplit('/').next() {
        Some("Decide") => "Decide",
        Some("ReportOutcome") => "ReportOutcome",
        _ => "unknown",
    }
}

impl<S> Service<http::Request<Body>> for Framing<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let reached = Reached::default();
        request.extensions_mut().insert(reached.clone());
        let rpc = rpc_name(request.uri().path());
        let max = self.max_request_bytes;
        let answered = self.inner.call(request);
        Box::pin(async move {
            let response = answered.await?;
            if reached.get() {
                return Ok(response);
            }
            let Some(status) = Status::from_header_map(response.headers()) else {
                return Ok(response);
            };
            let refusal = match status.code() {
                tonic::Code::Ok | tonic::Code::Unimplemented => return Ok(response),
                // Already ours, from the codec.
                tonic::Code::InvalidArgument => {
                    audit::refused(rpc, "malformed_request", Some("request"));
                    return Ok(response);
                }
                // tonic measures the frame's declared length against the
                // limit before reading the message: bytes as received.
                tonic::Code::OutOfRange => (
                    "request_too_large",
                    FieldError::new(
                        "request",
                        format!(
                            "is larger than {max} bytes as received (`limits.max_request_bytes`)"
                        ),
                    ),
                ),
                _ => (
                    "malformed_request",
                    FieldError::new(
                        "request",
                        format!("is not a well-formed gRPC message: {}", status.message()),
                    ),
                ),
            };
            audit::refused(rpc, refusal.0, Some("request"));
            Ok(invalid(&refusal.1).into_http())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_names_come_from_a_closed_set() {
        assert_eq!(rpc_name("/stepgate.v1.DecisionService/Decide"), "Decide");
        assert_eq!(
            rpc_name("/stepgate.v1.DecisionService/ReportOutcome"),
            "ReportOutcome"
        );
        assert_eq!(
            rpc_name("/stepgate.v1.DecisionService/alice@example.com"),
            "unknown"
        );
    }
}
