//! `stepgate report`: report an authentication outcome, print what it did.

use clap::{Args, ValueEnum};
use stepgate::server::proto;

use super::{Target, connect, target_parts};

#[derive(Clone, Copy, ValueEnum)]
pub enum EventArg {
    AuthSucceeded,
    AuthFailed,
    StepUpSucceeded,
    StepUpFailed,
    /// Feedback: the session or device was not the user's.
    Compromised,
    /// Feedback: a false positive; lifts a compromise mark.
    ConfirmedSafe,
}

#[derive(Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub target: Target,
    /// What happened.
    #[arg(long, value_enum)]
    pub event: EventArg,
    /// The decision this outcome answers (the `decision_id` Decide returned).
    #[arg(long, default_value = "")]
    pub decision_id: String,
    /// The assurance level the user holds after this step (1..3); left out,
    /// the event implies it.
    #[arg(long, value_name = "LEVEL")]
    pub reached_aal: Option<u32>,
}

pub async fn run(args: ReportArgs) -> miette::Result<()> {
    let event = match args.event {
        EventArg::AuthSucceeded => proto::Event::AuthSucceeded,
        EventArg::AuthFailed => proto::Event::AuthFailed,
        EventArg::StepUpSucceeded => proto::Event::StepUpSucceeded,
        EventArg::StepUpFailed => proto::Event::StepUpFailed,
        EventArg::Compromised => proto::Event::Compromised,
        EventArg::ConfirmedSafe => proto::Event::ConfirmedSafe,
    };
    let (subject, device, network) = target_parts(&args.target);
    let request = proto::ReportOutcomeRequest {
        decision_id: args.decision_id,
        journey: args.target.journey.clone(),
        subject,
        device,
        network,
        event: event.into(),
        reached_aal: args.reached_aal.unwrap_or(0),
    };
    let mut client = connect(&args.target).await?;
    let response = client
        .report_outcome(super::request(&args.target, request)?)
        .await
        .map_err(|s| super::call_error(&args.target, s))?
        .into_inner();
    let effect = proto::ReportEffect::try_from(response.effect).unwrap_or_default();
    let out = serde_json::json!({
        "reported": event.as_str_name(),
        "effect": effect.as_str_name(),
        "required_aal": response.required_aal,
        "reached_aal": response.reached_aal,
        "decision_found": response.decision_found,
    });
    println!("{out}");
    Ok(())
}
