//! Faults to gRPC statuses, in exactly one place. Deny and step-up are
//! answers and never pass through here.

use tonic::{Code, Status};

use crate::audit;
pub use crate::decision::FieldError;
use crate::engine::EngineError;
use crate::metrics::Metrics;
use crate::store::StoreError;

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl ServiceError {
    /// The stable snake_case code of the fault (also the decision log's
    /// `fault` field) and its gRPC code.
    fn kind(&self) -> (&'static str, Code) {
        match self {
            ServiceError::Invalid(_) | ServiceError::Engine(EngineError::Invalid(_)) => {
                ("invalid_argument", Code::InvalidArgument)
            }
            ServiceError::Engine(EngineError::UnknownJourney { .. }) => {
                ("unknown_journey", Code::InvalidArgument)
            }
            ServiceError::Engine(EngineError::Attributes { .. }) => {
                ("invalid_attributes", Code::InvalidArgument)
            }
            ServiceError::Engine(EngineError::Store(StoreError::Unavailable(_))) => {
                ("store_unavailable", Code::Unavailable)
            }
            ServiceError::Engine(EngineError::Internal(_)) => ("internal", Code::Internal),
        }
    }

    /// The field at fault, when a rule was broken.
    fn field(&self) -> Option<&str> {
        match self {
            ServiceError::Invalid(e) | ServiceError::Engine(EngineError::Invalid(e)) => {
                Some(&e.field)
            }
            ServiceError::Engine(EngineError::UnknownJourney { field, .. }) => Some(field),
            ServiceError::Engine(EngineError::Attributes { .. }) => Some("attributes"),
            ServiceError::Engine(_) => None,
        }
    }

    /// The status for `rpc`'s caller. A refused request is counted and
    /// logged without its content; internal detail goes to the log, never
    /// to the caller.
    pub fn into_status(self, rpc: &str, metrics: &Metrics) -> Status {
        let (fault, code) = self.kind();
        metrics.refused(rpc, fault);
        match code {
            Code::Internal => {
                tracing::error!(rpc, fault, error = %self, "internal error");
                Status::new(code, "internal error")
            }
            Code::InvalidArgument => {
                audit::refused(rpc, fault, self.field());
                Status::new(code, self.to_string())
            }
            _ => {
                tracing::warn!(rpc, fault, error = %self, "request failed");
                Status::new(code, self.to_string())
            }
        }
    }
}
