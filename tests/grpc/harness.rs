//! Starts the service in-process on 127.0.0.1:0 and builds requests.

use std::path::PathBuf;
use std::sync::Arc;

use stepgate::config::Config;
use stepgate::engine::Engine;
use stepgate::server::proto::decision_service_client::DecisionServiceClient;
use stepgate::server::proto::{self, DecideRequest, Event, Outcome, ReportOutcomeRequest};
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub fn bundled_policies() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies")
}

pub struct TestServer {
    pub addr: String,
    pub engine: Arc<Engine>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// The bundled policies with default config.
    pub async fn start() -> Self {
        Self::start_with(Config {
            policies_dir: bundled_policies(),
            ..Config::default()
        })
        .await
    }

    pub async fn start_with(config: Config) -> Self {
        let config = Arc::new(config);
        let engine = Arc::new(stepgate::app::build_engine(config.clone()).expect("engine builds"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = format!("http://{}", listener.local_addr().expect("local addr"));
        let (tx, rx) = oneshot::channel::<()>();
        let serving = engine.clone();
        let task = tokio::spawn(async move {
            stepgate::server::serve(serving, config.limits, listener, async {
                let _ = rx.await;
            })
            .await
            .expect("server runs");
        });
        Self {
            addr,
            engine,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.addr.clone())
            .expect("uri")
            .connect()
            .await
            .expect("connect")
    }

    pub async fn client(&self) -> DecisionServiceClient<Channel> {
        DecisionServiceClient::new(self.channel().await)
    }

    /// (users, ips) held by the context store.
    pub fn store_sizes(&self) -> (u64, u64) {
        self.engine.store().sizes()
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task ends cleanly");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A Decide request for `user` on `journey` from `device` and `ip` at `aal`.
pub fn decide(journey: &str, user: &str, device: &str, ip: &str, aal: u32) -> DecideRequest {
    DecideRequest {
        journey: journey.into(),
        subject: Some(proto::Subject {
            user_id: user.into(),
            tenant: String::new(),
        }),
        authn: Some(proto::Authn {
            aal,
            amr: vec!["pwd".into()],
            auth_time: 0,
        }),
        device: Some(proto::Device {
            id: device.into(),
            user_agent: "test-agent/1.0".into(),
        }),
        network: Some(proto::Network { ip: ip.into() }),
        attributes: None,
        request_id: "req-1".into(),
    }
}

pub fn report(
    journey: &str,
    user: &str,
    device: &str,
    ip: &str,
    event: Event,
) -> ReportOutcomeRequest {
    ReportOutcomeRequest {
        decision_id: String::new(),
        journey: journey.into(),
        subject: Some(proto::Subject {
            user_id: user.into(),
            tenant: String::new(),
        }),
        device: Some(proto::Device {
            id: device.into(),
            user_agent: String::new(),
        }),
        network: Some(proto::Network { ip: ip.into() }),
        event: event.into(),
    }
}

/// What a test asserts about an answer: outcome, level and reason ids.
#[derive(Debug, PartialEq, Eq)]
pub struct Seen {
    pub outcome: Outcome,
    pub required_aal: u32,
    pub reasons: Vec<String>,
}

pub fn seen(response: &proto::DecideResponse) -> Seen {
    Seen {
        outcome: Outcome::try_from(response.outcome).expect("known outcome"),
        required_aal: response.required_aal,
        reasons: response
            .reasons
            .iter()
            .map(|r| r.policy_id.clone())
            .collect(),
    }
}

pub fn expect(outcome: Outcome, required_aal: u32, reasons: &[&str]) -> Seen {
    Seen {
        outcome,
        required_aal,
        reasons: reasons.iter().map(|r| (*r).to_owned()).collect(),
    }
}

pub async fn ask(
    client: &mut DecisionServiceClient<Channel>,
    request: DecideRequest,
) -> proto::DecideResponse {
    client
        .decide(request)
        .await
        .expect("decide answers")
        .into_inner()
}

/// Reports a completed sign-in, so the device becomes known.
pub async fn sign_in(
    client: &mut DecisionServiceClient<Channel>,
    user: &str,
    device: &str,
    ip: &str,
) {
    client
        .report_outcome(report("login", user, device, ip, Event::AuthSucceeded))
        .await
        .expect("report accepted");
}

pub async fn fail(client: &mut DecisionServiceClient<Channel>, user: &str, ip: &str, times: usize) {
    for _ in 0..times {
        client
            .report_outcome(report("login", user, "", ip, Event::AuthFailed))
            .await
            .expect("report accepted");
    }
}
