//! `stepgate.v1.DecisionService`: proto in, validate, call the engine, proto
//! out. Faults go through [`super::status`]; answers never do.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::decision::{Outcome, ReportEffect, ReportJudgement};
use crate::engine::{Answer, Engine};

use super::framing::Reached;
use super::proto::{self, decision_service_server::DecisionService};
use super::status::ServiceError;
use super::validate;

/// What a caller is told about a policy that failed to evaluate.
pub const POLICY_ERROR_MESSAGE: &str = "the policy failed to evaluate, so the levels where it failed were not permitted; the service log has the detail";

pub struct DecisionApi {
    engine: Arc<Engine>,
}

impl DecisionApi {
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }
}

fn to_proto(answer: Answer, request_id: String) -> proto::DecideResponse {
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

fn report_to_proto(judgement: ReportJudgement) -> proto::ReportOutcomeResponse {
    let effect = match judgement.effect {
        ReportEffect::Completed => proto::ReportEffect::Completed,
        ReportEffect::Partial => proto::ReportEffect::Partial,
        ReportEffect::FailureCounted => proto::ReportEffect::FailureCounted,
        ReportEffect::IgnoredDenied => proto::ReportEffect::IgnoredDenied,
    };
    proto::ReportOutcomeResponse {
        effect: effect.into(),
        required_aal: judgement.required.map_or(0, |l| l.number()),
        reached_aal: judgement.reached.number(),
        decision_found: judgement.decision_found,
    }
}

#[tonic::async_trait]
impl DecisionService for DecisionApi {
    async fn decide(
        &self,
        request: Request<proto::DecideRequest>,
    ) -> Result<Response<proto::DecideResponse>, Status> {
        Reached::mark(&request);
        let req = request.into_inner();
        let result: Result<_, ServiceError> = async {
            let input = validate::decide(&req)?;
            Ok(self.engine.decide(&input, self.engine.now()).await?)
        }
        .await;
        let answer = result.map_err(|e| e.into_status("Decide", self.engine.metrics()))?;
        Ok(Response::new(to_proto(answer, req.request_id)))
    }

    async fn report_outcome(
        &self,
        request: Request<proto::ReportOutcomeRequest>,
    ) -> Result<Response<proto::ReportOutcomeResponse>, Status> {
        Reached::mark(&request);
        let req = request.into_inner();
        let result: Result<_, ServiceError> = async {
            let input = validate::report(&req)?;
            Ok(self.engine.report(&input, self.engine.now()).await?)
        }
        .await;
        let judgement =
            result.map_err(|e| e.into_status("ReportOutcome", self.engine.metrics()))?;
        Ok(Response::new(report_to_proto(judgement)))
    }
}
