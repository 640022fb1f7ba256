//! Faults to gRPC statuses, in exactly one place. Deny and step-up are
//! answers and never pass through here.

use tonic::{Code, Status};

use crate::engine::EngineError;
use crate::store::StoreError;

/// A request field that broke a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {rule}")]
pub struct FieldError {
    pub field: String,
    pub rule: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, rule: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            rule: rule.into(),
        }
    }
}

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl From<ServiceError> for Status {
    fn from(err: ServiceError) -> Self {
        let code = match &err {
            ServiceError::Invalid(_)
            | ServiceError::Engine(EngineError::UnknownJourney { .. })
            | ServiceError::Engine(EngineError::Attributes { .. }) => Code::InvalidArgument,
            ServiceError::Engine(EngineError::Store(StoreError::Unavailable(_))) => {
                Code::Unavailable
            }
            ServiceError::Engine(EngineError::Internal(_)) => Code::Internal,
        };
        if code == Code::Internal {
            // Internal detail goes to the log, not to the caller.
            tracing::error!(error = %err, "internal error");
            return Status::new(code, "internal error");
        }
        Status::new(code, err.to_string())
    }
}
