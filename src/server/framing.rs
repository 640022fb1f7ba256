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

use crate::decision::FieldError;
use crate::fault::FaultKind;
use crate::record::{Door, Recorder};

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

/// Wraps a generated unary gRPC service: a request the transport refused
/// before its handler ran (tonic's INTERNAL for a frame or message that
/// does not decode, OUT_OF_RANGE for one over the size limit) is answered
/// with INVALID_ARGUMENT naming what was wrong, counted and logged. Every
/// other status passes untouched: UNIMPLEMENTED for an unknown method or an
/// unsupported `grpc-encoding`, which tells a client what to change, and
/// CANCELLED or UNAVAILABLE when the connection itself failed.
#[derive(Debug, Clone)]
pub struct Framing<S> {
    inner: S,
    max_request_bytes: usize,
    /// The setting that limit comes from, as the message names it.
    limit_setting: &'static str,
    recorder: Recorder,
    answer: Option<RefusalAnswer>,
}

/// The encoded response message a service answers a refused request with,
/// instead of an error status: the fault and the rule that was broken in,
/// the protobuf bytes out.
#[derive(Clone)]
pub struct RefusalAnswer(Arc<AnswerFn>);

/// Fault and broken rule in, encoded response message out.
type AnswerFn = dyn Fn(FaultKind, &FieldError) -> Vec<u8> + Send + Sync;

impl RefusalAnswer {
    pub fn new(answer: impl Fn(FaultKind, &FieldError) -> Vec<u8> + Send + Sync + 'static) -> Self {
        Self(Arc::new(answer))
    }
}

impl std::fmt::Debug for RefusalAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefusalAnswer")
    }
}

impl<S> Framing<S> {
    /// `max_request_bytes` must be the limit the inner service enforces
    /// (`max_decoding_message_size`), and `limit_setting` the setting it
    /// comes from, so the message can name both.
    pub fn new(
        inner: S,
        max_request_bytes: usize,
        limit_setting: &'static str,
        recorder: Recorder,
    ) -> Self {
        Self {
            inner,
            max_request_bytes,
            limit_setting,
            recorder,
            answer: None,
        }
    }

    /// Answers a refused request with a successful call carrying `answer`'s
    /// message instead of an error status: for Envoy ext_authz, whose
    /// caller applies its own failure mode (perhaps `failure_mode_allow`)
    /// to any error.
    #[must_use]
    pub fn answering_with(mut self, answer: RefusalAnswer) -> Self {
        self.answer = Some(answer);
        self
    }
}

/// A successful unary gRPC response carrying `message`: one uncompressed
/// length-prefixed frame, then `grpc-status: 0` in the trailers. The body
/// is a stream of unknown length: with an exact length, hyper sends a
/// `content-length` and ends the stream after the data, and the trailers
/// never leave (a client then sees a call without a status: an error).
fn grpc_ok(message: &[u8]) -> http::Response<Body> {
    let (frames, content_type) = grpc_ok_frames(message);
    let mut response = http::Response::new(Body::new(frames));
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, content_type);
    response
}

/// A body of data frames then trailers, whatever its response type.
pub type Frames = http_body_util::StreamBody<
    tokio_stream::Iter<
        std::array::IntoIter<Result<hyper::body::Frame<tonic::codegen::Bytes>, Infallible>, 2>,
    >,
>;

/// The body of [`grpc_ok`] and its content type.
pub(crate) fn grpc_ok_frames(message: &[u8]) -> (Frames, http::HeaderValue) {
    let mut frame = Vec::with_capacity(5 + message.len());
    frame.push(0);
    frame.extend_from_slice(
        &u32::try_from(message.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    frame.extend_from_slice(message);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let frames = [
        hyper::body::Frame::data(tonic::codegen::Bytes::from(frame)),
        hyper::body::Frame::trailers(trailers),
    ]
    .map(Ok::<_, Infallible>);
    (
        http_body_util::StreamBody::new(tokio_stream::iter(frames)),
        http::HeaderValue::from_static("application/grpc"),
    )
}

impl<S: NamedService> NamedService for Framing<S> {
    const NAME: &'static str = S::NAME;
}

/// The method of a request path, from a closed set so a log line or a
/// metric label never carries a caller's text.
pub(crate) fn rpc_name(path: &str) -> &'static str {
    match path {
        "/stepgate.v1.DecisionService/Decide" => "Decide",
        "/stepgate.v1.DecisionService/ReportOutcome" => "ReportOutcome",
        "/envoy.service.auth.v3.Authorization/Check" => super::ext_authz::RPC,
        "/grpc.health.v1.Health/Check" => "Check",
        "/grpc.health.v1.Health/Watch" => "Watch",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
        | "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo" => "reflection",
        _ => "unknown",
    }
}

impl<S> Service<http::Request<Body>> for Framing<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
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
        let door = if rpc == super::ext_authz::RPC {
            Door::ExtAuthz
        } else {
            Door::Grpc
        };
        let call = super::guard::Admission::call(request.extensions().get(), door, rpc);
        let max = self.max_request_bytes;
        let setting = self.limit_setting;
        let recorder = self.recorder.clone();
        let answer = self.answer.clone();
        // The service made ready is the one that answers (tower's rule):
        // it goes into the future, a fresh clone stays for the next call.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let too_large = move || {
            FieldError::new(
                "request",
                format!("is larger than {max} bytes as received (`{setting}`)"),
            )
        };
        Box::pin(async move {
            // Refused before any handler ran: counted and logged, then
            // answered as the service answers (a CheckResponse for Envoy)
            // or with INVALID_ARGUMENT.
            let refuse =
                |fault: FaultKind, err: FieldError, fallback: Option<http::Response<Body>>| {
                    recorder.refused(&call, fault, Some("request"));
                    match (&answer, fallback) {
                        (Some(answer), _) => grpc_ok(&(answer.0)(fault, &err)),
                        (None, Some(response)) => response,
                        (None, None) => {
                            tonic::Status::new(super::status::statuses(fault).0, err.to_string())
                                .into_http()
                        }
                    }
                };
            let request = if answer.is_some() {
                // A service that answers refusals itself has a generated
                // codec that reads the first message of a unary call and
                // ignores the rest: the body is read here, whole and
                // bounded, so a second message is refused, not ignored.
                match one_message(request, max).await {
                    Ok(request) => request,
                    Err((fault, err)) => {
                        let err = err.unwrap_or_else(too_large);
                        return Ok(refuse(fault, err, None));
                    }
                }
            } else {
                request
            };
            let response = inner.call(request).await?;
            if reached.get() {
                return Ok(response);
            }
            let Some(status) = Status::from_header_map(response.headers()) else {
                return Ok(response);
            };
            let (fault, err, rewrite) = match status.code() {
                // Already ours, from the codec (or, for health, tonic's own
                // refusal of a bad argument).
                tonic::Code::InvalidArgument => (
                    FaultKind::MalformedRequest,
                    FieldError::new("request", status.message().to_owned()),
                    false,
                ),
                // tonic measures the frame's declared length against the
                // limit before reading the message: bytes as received.
                tonic::Code::OutOfRange => (FaultKind::RequestTooLarge, too_large(), true),
                // For a service that answers refusals itself (Envoy's
                // Check), an unsupported `grpc-encoding` on its method is a
                // request it cannot read, answered like the others: a
                // gRPC error would meet Envoy's failure mode instead.
                tonic::Code::Unimplemented if answer.is_some() && rpc != "unknown" => (
                    FaultKind::MalformedRequest,
                    FieldError::new("request", format!("cannot be read: {}", status.message())),
                    true,
                ),
                // A frame cut short, a bad compression flag, no message, a
                // message tonic's own codec could not decode.
                tonic::Code::Internal => (
                    FaultKind::MalformedRequest,
                    FieldError::new(
                        "request",
                        format!("is not a well-formed gRPC message: {}", status.message()),
                    ),
                    true,
                ),
                _ => return Ok(response),
            };
            Ok(refuse(fault, err, (!rewrite).then_some(response)))
        })
    }
}

/// Reads a unary request's body, at most one frame of at most `max` bytes
/// of message, and hands the request on with the bytes read. A body past
/// the limit is `request_too_large` (the rule left to the caller to word);
/// a frame followed by more bytes is `malformed_request`. A frame cut short
/// is left for the codec to refuse, as for every service.
async fn one_message(
    request: http::Request<Body>,
    max: usize,
) -> Result<http::Request<Body>, (FaultKind, Option<FieldError>)> {
    use http_body_util::BodyExt as _;
    const PREFIX: usize = 5;
    let (parts, body) = request.into_parts();
    let bytes = match http_body_util::Limited::new(body, max.saturating_add(PREFIX))
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => {
            return Err((FaultKind::RequestTooLarge, None));
        }
        Err(err) => {
            return Err((
                FaultKind::MalformedRequest,
                Some(FieldError::new(
                    "request",
                    format!("body could not be read: {err}"),
                )),
            ));
        }
    };
    let declared = bytes
        .get(1..PREFIX)
        .and_then(|len| <[u8; 4]>::try_from(len).ok())
        .map(|len| u32::from_be_bytes(len) as usize);
    if let Some(declared) = declared
        && bytes.len() > PREFIX.saturating_add(declared)
    {
        return Err((
            FaultKind::MalformedRequest,
            Some(FieldError::new(
                "request",
                "carries a second message; a unary call carries exactly one",
            )),
        ));
    }
    Ok(http::Request::from_parts(
        parts,
        Body::new(http_body_util::Full::new(bytes)),
    ))
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
