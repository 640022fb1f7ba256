//! Faults to statuses, in exactly one place: each fault kind's gRPC code
//! and HTTP status side by side. Deny and step-up are answers and never
//! pass through here.

use tonic::Code;
use tonic::codegen::http::StatusCode;

pub use crate::decision::FieldError;
use crate::engine::EngineError;
use crate::fault::FaultKind;
use crate::record::{Call, Recorder};

/// The gRPC code and the HTTP status a door answers a fault with.
pub fn statuses(kind: FaultKind) -> (Code, StatusCode) {
    match kind {
        // An oversized body is one more way a request is malformed: 400,
        // as AuthZEN answers every request it cannot read, with the fault
        // code telling it apart.
        FaultKind::InvalidArgument
        | FaultKind::UnknownJourney
        | FaultKind::InvalidAttributes
        | FaultKind::MalformedRequest
        | FaultKind::RequestTooLarge => (Code::InvalidArgument, StatusCode::BAD_REQUEST),
        // Gateway doors answer these with the configured status instead
        // (`gateway.unmapped`, `gateway.unreadable_status`); 403 is their
        // default.
        FaultKind::UnmappedRoute | FaultKind::UnreadableRequest => {
            (Code::PermissionDenied, StatusCode::FORBIDDEN)
        }
        FaultKind::Unauthenticated => (Code::Unauthenticated, StatusCode::UNAUTHORIZED),
        FaultKind::PermissionDenied => (Code::PermissionDenied, StatusCode::FORBIDDEN),
        FaultKind::RateLimited => (Code::ResourceExhausted, StatusCode::TOO_MANY_REQUESTS),
        FaultKind::DeadlineExceeded => (Code::DeadlineExceeded, StatusCode::GATEWAY_TIMEOUT),
        FaultKind::Overloaded | FaultKind::StoreUnavailable => {
            (Code::Unavailable, StatusCode::SERVICE_UNAVAILABLE)
        }
        FaultKind::Internal => (Code::Internal, StatusCode::INTERNAL_SERVER_ERROR),
    }
}

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Admission refused the request.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl ServiceError {
    /// Which fault this is.
    pub fn kind(&self) -> FaultKind {
        match self {
            ServiceError::Invalid(_) => FaultKind::InvalidArgument,
            ServiceError::Engine(e) => e.kind(),
        }
    }

    /// The field at fault, when a rule was broken.
    fn field(&self) -> Option<&str> {
        match self {
            ServiceError::Invalid(e) => Some(&e.field),
            ServiceError::Engine(e) => e.field(),
        }
    }

    /// What the caller may be told: the field and the rule for its own
    /// mistakes; nothing of the service's internals.
    pub fn public_message(&self) -> String {
        match self.kind() {
            FaultKind::Internal => "internal error".to_owned(),
            _ => self.to_string(),
        }
    }

    /// Records the fault as `call`'s (counted, and in the decision log
    /// without the request's content; a service fault's detail goes to
    /// the service log only) and says which it was.
    pub fn record(&self, call: &Call, recorder: &Recorder) -> FaultKind {
        let kind = self.kind();
        recorder.refused(call, kind, self.field());
        let rpc = call.rpc;
        if kind == FaultKind::Internal {
            tracing::error!(rpc, fault = kind.code(), error = %self, "internal error");
        } else if !kind.is_callers() {
            tracing::warn!(rpc, fault = kind.code(), error = %self, "request failed");
        }
        kind
    }

    /// The gRPC status for the caller, after [`Self::record`].
    pub fn into_status(self, call: &Call, recorder: &Recorder) -> tonic::Status {
        let kind = self.record(call, recorder);
        tonic::Status::new(statuses(kind).0, self.public_message())
    }
}
