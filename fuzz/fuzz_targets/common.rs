//! What the targets share: one engine over the bundled policies (with a
//! route map, so the gateway doors have journeys to map to), and a
//! runtime to drive its async API on the fuzzer's thread.

#![allow(dead_code, reason = "each target uses part of this")]

use std::sync::{Arc, OnceLock};

use stepgate::config::{Config, GatewayConfig, RouteConfig};
use stepgate::engine::Engine;

pub fn policies_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"))
    })
}

pub fn engine() -> &'static Arc<Engine> {
    static ENGINE: OnceLock<Arc<Engine>> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let route = |methods: &[&str], path: &str, journey: &str| RouteConfig {
            methods: methods.iter().map(|m| (*m).to_owned()).collect(),
            path: Some(path.to_owned()),
            prefix: None,
            template: None,
            journey: journey.to_owned(),
            attributes: Default::default(),
        };
        let config = Config {
            policies_dir: policies_dir(),
            gateway: GatewayConfig {
                routes: vec![
                    route(&["POST"], "/payments", "payment"),
                    route(&[], "/login", "login"),
                ],
                ..GatewayConfig::default()
            },
            ..Config::default()
        };
        let engine = stepgate::app::build_engine(Arc::new(config))
            .unwrap_or_else(|e| panic!("engine: {e}"));
        Arc::new(engine)
    })
}
