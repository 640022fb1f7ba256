//! The front doors: the only module that knows tonic, protobuf, Envoy and
//! HTTP types. Each door is a file of its own over the one core.
//!
//! The gRPC listener serves `stepgate.v1.DecisionService` ([`grpc`]),
//! `envoy.service.auth.v3.Authorization` ([`ext_authz`]), `grpc.health.v1`
//! and server reflection (v1 and v1alpha); the HTTP listener ([`http`])
//! serves the JSON API, AuthZEN ([`authzen`]) and forward-auth.

pub mod admin;
pub mod authzen;
pub mod conn;
pub mod ext_authz;
pub mod framing;
pub mod gateway;
pub mod grpc;
pub mod guard;
pub mod http;
pub mod status;
pub mod summary;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic_health::ServingStatus;

use crate::engine::Engine;

/// Generated protobuf and gRPC code.
pub mod proto {
    #![expect(clippy::all, clippy::pedantic, reason = "generated code")]
    tonic::include_proto!("stepgate.v1");

    /// Encoded descriptor set of the API, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/stepgate_descriptor.bin"));
}

pub use grpc::DecisionApi;
use proto::decision_service_server::DecisionServiceServer;

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ServeError {
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("gRPC listener: {0}")]
    Listener(#[from] std::io::Error),
}

/// Serves gRPC behind `guard` (over TLS when its settings say so) until
/// `shutdown` resolves, then drains in-flight calls.
pub async fn serve(
    engine: Arc<Engine>,
    guard: Arc<guard::Guard>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let config = engine.config().clone();
    let limits = config.limits;
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    health
        .set_not_serving::<DecisionServiceServer<DecisionApi>>()
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    // The limit applies to the message as received: tonic checks a frame's
    // declared length before reading it, and `Framing` turns its refusal
    // into an INVALID_ARGUMENT that names the setting.
    let recorder = engine.recorder().clone();
    let gateway = Arc::new(gateway::Gateway::new(&config.gateway));
    let ext_authz = framing::Framing::new(
        envoy_types::ext_authz::v3::pb::AuthorizationServer::new(ext_authz::ExtAuthz::new(
            engine.clone(),
            gateway.clone(),
        ))
        .max_decoding_message_size(limits.max_check_request_bytes),
        limits.max_check_request_bytes,
        "limits.max_check_request_bytes",
        recorder.clone(),
    )
    .answering_with(ext_authz::refusal_answer(gateway));
    let api = framing::Framing::new(
        DecisionServiceServer::new(DecisionApi::new(engine))
            .max_decoding_message_size(limits.max_request_bytes),
        limits.max_request_bytes,
        "limits.max_request_bytes",
        recorder.clone(),
    );
    // Health checks get the same limit and the same answers to a message
    // that does not decode. Server reflection, a debugging aid on a
    // bidirectional stream, keeps tonic's own.
    let health_service = framing::Framing::new(
        health_service.max_decoding_message_size(limits.max_request_bytes),
        limits.max_request_bytes,
        "limits.max_request_bytes",
        recorder,
    );
    // The engine only exists once its policies loaded and validated, so the
    // service is ready now.
    health.set_service_status("", ServingStatus::Serving).await;
    health
        .set_serving::<DecisionServiceServer<DecisionApi>>()
        .await;
    let draining = health.clone();
    let shutdown = async move {
        shutdown.await;
        // Tell load balancers first, then drain in-flight calls.
        draining
            .set_service_status("", ServingStatus::NotServing)
            .await;
        draining
            .set_not_serving::<DecisionServiceServer<DecisionApi>>()
            .await;
    };
    let incoming = conn::accept(
        listener,
        guard.control().clone(),
        crate::access::reload::Listener::Grpc,
    )?;
    tonic::transport::Server::builder()
        .layer(guard::GrpcGuardLayer(guard))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(api)
        .add_service(ext_authz)
        .serve_with_incoming_shutdown(incoming.into_stream(), shutdown)
        .await?;
    Ok(())
}
