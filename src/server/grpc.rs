//! The gRPC door, `stepgate.v1.DecisionService`: proto in, admission, the
//! engine, proto out. Faults go through [`super::status`]; answers never
//! do.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::admission::{
    self, AttrNode, AttrView, AuthnAsk, DecideAsk, DeviceAsk, EventAsk, ForgetAsk, ReportAsk,
    SubjectAsk,
};
use crate::decision::{
    DecideInput, FieldError, ForgetInput, Outcome, OutcomeEvent, POLICY_ERROR_MESSAGE,
    ReportEffect, ReportInput, ReportJudgement,
};
use crate::engine::{Answer, Engine};
use crate::record::Door;
use crate::store::Erased;

use super::guard::Admission;

use super::framing::Reached;
use super::proto::{self, decision_service_server::DecisionService};
use super::status::ServiceError;

/// Protobuf `Value`s, as the gRPC door receives journey attributes.
impl AttrNode for prost_types::Value {
    fn view(&self) -> AttrView<'_, Self> {
        use prost_types::value::Kind;
        match &self.kind {
            None | Some(Kind::NullValue(_)) => AttrView::Null,
            Some(Kind::BoolValue(b)) => AttrView::Bool(*b),
            Some(Kind::NumberValue(n)) => AttrView::Number(*n),
            Some(Kind::StringValue(s)) => AttrView::String(s),
            Some(Kind::ListValue(list)) => AttrView::List(list.values.iter().collect()),
            Some(Kind::StructValue(s)) => {
                AttrView::Record(s.fields.iter().map(|(k, v)| (k.as_str(), v)).collect())
            }
        }
    }
}

fn subject(s: Option<&proto::Subject>) -> Option<SubjectAsk<'_>> {
    s.map(|s| SubjectAsk {
        user_id: &s.user_id,
        tenant: &s.tenant,
    })
}

fn device(d: Option<&proto::Device>) -> Option<DeviceAsk<'_>> {
    d.map(|d| DeviceAsk {
        id: &d.id,
        user_agent: &d.user_agent,
    })
}

/// A Decide, admitted.
pub fn admit_decide(req: &proto::DecideRequest) -> Result<DecideInput, FieldError> {
    let fields: Option<Vec<(&str, &prost_types::Value)>> = req
        .attributes
        .as_ref()
        .map(|s| s.fields.iter().map(|(k, v)| (k.as_str(), v)).collect());
    admission::decide(&DecideAsk {
        journey: &req.journey,
        subject: subject(req.subject.as_ref()),
        authn: req.authn.as_ref().map(|a| AuthnAsk {
            aal: a.aal,
            amr: &a.amr,
            auth_time: a.auth_time,
        }),
        device: device(req.device.as_ref()),
        ip: req.network.as_ref().map(|n| n.ip.as_str()),
        attributes: fields.as_deref(),
        request_id: &req.request_id,
    })
}

/// A ReportOutcome, admitted.
pub fn admit_report(req: &proto::ReportOutcomeRequest) -> Result<ReportInput, FieldError> {
    let number = req.event.to_string();
    let event = match proto::Event::try_from(req.event) {
        Ok(proto::Event::AuthSucceeded) => EventAsk::Known(OutcomeEvent::AuthSucceeded),
        Ok(proto::Event::AuthFailed) => EventAsk::Known(OutcomeEvent::AuthFailed),
        Ok(proto::Event::StepUpSucceeded) => EventAsk::Known(OutcomeEvent::StepUpSucceeded),
        Ok(proto::Event::StepUpFailed) => EventAsk::Known(OutcomeEvent::StepUpFailed),
        Ok(proto::Event::Compromised) => EventAsk::Known(OutcomeEvent::Compromised),
        Ok(proto::Event::ConfirmedSafe) => EventAsk::Known(OutcomeEvent::ConfirmedSafe),
        Ok(proto::Event::Unspecified) => EventAsk::Missing,
        Err(_) => EventAsk::Unknown(&number),
    };
    admission::report(&ReportAsk {
        journey: &req.journey,
        subject: subject(req.subject.as_ref()),
        device: device(req.device.as_ref()),
        ip: req.network.as_ref().map(|n| n.ip.as_str()),
        event,
        decision_id: &req.decision_id,
        reached_aal: req.reached_aal,
    })
}

pub struct DecisionApi {
    engine: Arc<Engine>,
}

impl DecisionApi {
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }
}

pub fn to_proto(answer: Answer, request_id: String) -> proto::DecideResponse {
    let d = answer.decision;
    let (outcome, required_aal) = match d.outcome {
        Outcome::Allow => (proto::Outcome::Allow, 0),
        Outcome::StepUp(aal) => (proto::Outcome::StepUp, aal.number()),
        Outcome::Deny => (proto::Outcome::Deny, 0),
    };
    proto::DecideResponse {
        outcome: outcome.into(),
        required_aal,
        required_acr: answer.required_acr.unwrap_or_default(),
        max_age: d.max_age,
        reasons: d
            .reasons
            .into_iter()
            .map(|r| proto::Reason {
                policy_id: r.policy_id,
                message: r.message,
            })
            .collect(),
        risk: Some(proto::Risk {
            score: d.risk.score,
            level: d.risk.level.as_str().to_owned(),
            signals: d
                .risk
                .contributions
                .into_iter()
                .map(|c| proto::RiskSignal {
                    name: c.signal.to_owned(),
                    points: c.points,
                })
                .collect(),
        }),
        decision_id: answer.decision_id.to_string(),
        policy_version: d.policy_version,
        degraded: answer.degraded,
        request_id,
        // Cedar's evaluation messages quote the values involved, which are
        // signals; callers get the policy id, the service log the detail.
        policy_errors: d
            .faults
            .into_iter()
            .map(|f| proto::PolicyError {
                policy_id: f.policy_id,
                message: POLICY_ERROR_MESSAGE.to_owned(),
            })
            .collect(),
    }
}

pub fn report_to_proto(judgement: ReportJudgement) -> proto::ReportOutcomeResponse {
    let effect = match judgement.effect {
        ReportEffect::Completed => proto::ReportEffect::Completed,
        ReportEffect::Partial => proto::ReportEffect::Partial,
        ReportEffect::FailureCounted => proto::ReportEffect::FailureCounted,
        ReportEffect::IgnoredDenied => proto::ReportEffect::IgnoredDenied,
        ReportEffect::Untrusted => proto::ReportEffect::Untrusted,
        ReportEffect::Cleared => proto::ReportEffect::Cleared,
        ReportEffect::IgnoredCompromised => proto::ReportEffect::IgnoredCompromised,
    };
    proto::ReportOutcomeResponse {
        effect: effect.into(),
        required_aal: judgement.required.map_or(0, |l| l.number()),
        reached_aal: judgement.reached_number(),
        decision_found: judgement.decision_found,
    }
}

#[tonic::async_trait]
impl DecisionService for DecisionApi {
    async fn decide(
        &self,
        request: Request<proto::DecideRequest>,
    ) -> Result<Response<proto::DecideResponse>, Status> {
        let call = Admission::call(request.extensions().get(), Door::Grpc, "Decide");
        Reached::mark(&request);
        let req = request.into_inner();
        let result: Result<_, ServiceError> = async {
            let input = admit_decide(&req)?;
            Ok(self.engine.decide(&input, &call).await?)
        }
        .await;
        let answer = result.map_err(|e| e.into_status(&call, self.engine.recorder()))?;
        Ok(Response::new(to_proto(answer, req.request_id)))
    }

    async fn report_outcome(
        &self,
        request: Request<proto::ReportOutcomeRequest>,
    ) -> Result<Response<proto::ReportOutcomeResponse>, Status> {
        let call = Admission::call(request.extensions().get(), Door::Grpc, "ReportOutcome");
        Reached::mark(&request);
        let req = request.into_inner();
        let result: Result<_, ServiceError> = async {
            let input = admit_report(&req)?;
            Ok(self.engine.report(&input, &call).await?)
        }
        .await;
        let judgement = result.map_err(|e| e.into_status(&call, self.engine.recorder()))?;
        Ok(Response::new(report_to_proto(judgement)))
    }

    async fn forget_user(
        &self,
        request: Request<proto::ForgetUserRequest>,
    ) -> Result<Response<proto::ForgetUserResponse>, Status> {
        let call = Admission::call(request.extensions().get(), Door::Grpc, "ForgetUser");
        Reached::mark(&request);
        let req = request.into_inner();
        let result: Result<_, ServiceError> = async {
            let input = admit_forget(&req)?;
            Ok(self.engine.forget(&input, &call).await?)
        }
        .await;
        let erased = result.map_err(|e| e.into_status(&call, self.engine.recorder()))?;
        Ok(Response::new(forget_to_proto(erased)))
    }
}

/// A ForgetUser, admitted.
pub fn admit_forget(req: &proto::ForgetUserRequest) -> Result<ForgetInput, FieldError> {
    admission::forget(&ForgetAsk {
        subject: subject(req.subject.as_ref()),
        all_tenants: req.all_tenants,
    })
}

pub fn forget_to_proto(erased: Erased) -> proto::ForgetUserResponse {
    proto::ForgetUserResponse {
        users_erased: u32::try_from(erased.users).unwrap_or(u32::MAX),
    }
}
