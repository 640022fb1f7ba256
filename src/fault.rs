//! The closed list of ways a request ends without a decision. Each kind
//! has a stable snake_case code: the decision log's `fault` field and the
//! metric label. Which status a door answers with is decided in one place,
//! [`crate::server::status::statuses`]. Deny and step-up are decisions,
//! never faults.

/// Every fault, the caller's and the service's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// A field broke a rule (the field and the rule are named).
    InvalidArgument,
    /// The journey is not in the catalog.
    UnknownJourney,
    /// The journey attributes do not fit the schema.
    InvalidAttributes,
    /// The bytes never became a request (a frame cut short, a message that
    /// does not decode, JSON that does not parse).
    MalformedRequest,
    /// The request is larger than `limits.max_request_bytes`.
    RequestTooLarge,
    /// A gateway request no route in `gateway.routes` maps.
    UnmappedRoute,
    /// A gateway request stepgate cannot read: no subject, malformed
    /// claims, an unreadable client address.
    UnreadableRequest,
    /// No credential, or one that names no configured caller.
    Unauthenticated,
    /// The caller may not ask this (operation, journey or tenant).
    PermissionDenied,
    /// The caller is over its rate limit.
    RateLimited,
    /// The request's deadline (the caller's, or the server's budget)
    /// passed; its work was abandoned.
    DeadlineExceeded,
    /// Too many requests in progress (`limits.max_in_flight`): shed.
    Overloaded,
    /// The context store cannot answer.
    StoreUnavailable,
    /// Anything else that is the service's own fault.
    Internal,
}

impl FaultKind {
    /// The stable code.
    pub const fn code(self) -> &'static str {
        match self {
            FaultKind::InvalidArgument => "invalid_argument",
            FaultKind::UnknownJourney => "unknown_journey",
            FaultKind::InvalidAttributes => "invalid_attributes",
            FaultKind::MalformedRequest => "malformed_request",
            FaultKind::RequestTooLarge => "request_too_large",
            FaultKind::UnmappedRoute => "unmapped_route",
            FaultKind::UnreadableRequest => "unreadable_request",
            FaultKind::Unauthenticated => "unauthenticated",
            FaultKind::PermissionDenied => "permission_denied",
            FaultKind::RateLimited => "rate_limited",
            FaultKind::DeadlineExceeded => "deadline_exceeded",
            FaultKind::Overloaded => "overloaded",
            FaultKind::StoreUnavailable => "store_unavailable",
            FaultKind::Internal => "internal",
        }
    }

    /// The caller's mistake (refused; nothing was stored), as opposed to
    /// the service's own fault.
    pub const fn is_callers(self) -> bool {
        !matches!(
            self,
            FaultKind::StoreUnavailable
                | FaultKind::Internal
                | FaultKind::Overloaded
                | FaultKind::DeadlineExceeded
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_snake_case() {
        let all = [
            FaultKind::InvalidArgument,
            FaultKind::UnknownJourney,
            FaultKind::InvalidAttributes,
            FaultKind::MalformedRequest,
            FaultKind::RequestTooLarge,
            FaultKind::UnmappedRoute,
            FaultKind::UnreadableRequest,
            FaultKind::Unauthenticated,
            FaultKind::PermissionDenied,
            FaultKind::RateLimited,
            FaultKind::DeadlineExceeded,
            FaultKind::Overloaded,
            FaultKind::StoreUnavailable,
            FaultKind::Internal,
        ];
        let codes: std::collections::BTreeSet<&str> = all.iter().map(|k| k.code()).collect();
        assert_eq!(codes.len(), all.len());
        assert!(
            codes
                .iter()
                .all(|c| c.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_'))
        );
        assert_eq!(all.iter().filter(|k| !k.is_callers()).count(), 4);
    }
}
