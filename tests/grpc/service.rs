//! Health and reflection, as a load balancer and grpcurl see them.

use tokio_stream::StreamExt as _;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::harness::TestServer;

#[tokio::test]
async fn health_reports_serving_once_policies_are_loaded() {
    let server = TestServer::start().await;
    let mut health = HealthClient::new(server.channel().await);
    for service in ["", "stepgate.v1.DecisionService"] {
        let response = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health answers")
            .into_inner();
        assert_eq!(
            response.status(),
            ServingStatus::Serving,
            "service `{service}`"
        );
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .expect_err("unknown service");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    server.stop().await;
}

/// Asks a reflection service (v1 or v1alpha: the generated types differ,
/// the exchange does not) for its list of services.
macro_rules! list_services {
    ($version:ident, $server:expr) => {{
        use tonic_reflection::pb::$version::ServerReflectionRequest;
        use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;

        let mut client = ServerReflectionClient::new($server.channel().await);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = client
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .expect("reflection answers")
            .into_inner();
        let response = stream.next().await.expect("one response").expect("ok");
        let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
            panic!(
                "expected a service list, got {:?}",
                response.message_response
            );
        };
        list.service
            .into_iter()
            .map(|s| s.name)
            .collect::<Vec<String>>()
    }};
}

#[tokio::test]
async fn reflection_v1_lists_the_decision_service() {
    let server = TestServer::start().await;
    let names = list_services!(v1, server);
    assert!(
        names.contains(&"stepgate.v1.DecisionService".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );
}

#[tokio::test]
async fn reflection_v1alpha_lists_the_decision_service() {
    let server = TestServer::start().await;
    let names = list_services!(v1alpha, server);
    assert!(
        names.contains(&"stepgate.v1.DecisionService".to_owned()),
        "{names:?}"
    );
}
