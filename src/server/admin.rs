//! The admin listener, for operators and their tooling, on an address of
//! its own (`admin.listen`, loopback by default): `/metrics` in the
//! Prometheus text format, `/healthz` (the process is alive) and `/readyz`
//! (policies loaded and not draining). With `admin.token_file` set,
//! `/metrics` asks for that bearer token (read at start, and again when
//! the file changes); the probes stay open.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::access::reload::AccessControl;
use crate::engine::Engine;

use super::http::HttpError;

/// Whether the service takes requests: false until every listener is up,
/// and again from the moment it starts draining. Mirrored in the
/// `stepgate_ready` gauge.
#[derive(Debug, Clone)]
pub struct Readiness {
    ready: Arc<AtomicBool>,
    engine: Arc<Engine>,
}

impl Readiness {
    /// Not ready yet.
    pub fn new(engine: Arc<Engine>) -> Self {
        engine.metrics().set_ready(false);
        Self {
            ready: Arc::new(AtomicBool::new(false)),
            engine,
        }
    }

    pub fn set(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
        self.engine.metrics().set_ready(ready);
    }

    pub fn get(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

/// The Prometheus text exposition format, version 0.0.4.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn metrics(axum::extract::State(ready): axum::extract::State<Readiness>) -> Response {
    let engine = &ready.engine;
    // Sizes are read at scrape time, not kept up to date per request.
    engine.metrics().store(engine.store().stats());
    let mut response = engine.metrics().render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(METRICS_CONTENT_TYPE),
    );
    response
}

async fn readyz(axum::extract::State(ready): axum::extract::State<Readiness>) -> Response {
    // The engine exists only once its policies loaded and validated; what
    // is left to tell is whether the listeners are up and not draining.
    if ready.get() {
        let body = if ready.engine.config().insecure() {
            "ready; WARNING: callers are not authenticated and a decision door is reachable beyond loopback (`security.allow_unauthenticated_callers`)\n"
        } else {
            "ready\n"
        };
        (StatusCode::OK, body).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: starting or draining\n",
        )
            .into_response()
    }
}

/// The admin routes; `/metrics` behind `admin.token_file`'s tokens when
/// `control` has them (read again when the file changes, with the
/// callers' files).
pub fn router(ready: Readiness, control: Option<Arc<AccessControl>>) -> Router {
    let metrics_route = match control {
        Some(control) => {
            get(metrics).layer(axum::middleware::from_fn_with_state(control, require_token))
        }
        None => get(metrics),
    };
    Router::new()
        .route("/metrics", metrics_route)
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(ready)
}

/// Lets a request through when no token is configured, or with
/// `Authorization: Bearer <token>` of one (compared in constant time);
/// 401 otherwise.
async fn require_token(
    axum::extract::State(control): axum::extract::State<Arc<AccessControl>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(table) = control.admin_token() else {
        return next.run(request).await;
    };
    let presented = super::guard::bearer(request.headers(), "authorization");
    match presented.map(|t| t.map(|t| table.lookup(t).caller)) {
        Ok(Some(Some(_))) => next.run(request).await,
        _ => {
            let mut response = (
                StatusCode::UNAUTHORIZED,
                "`/metrics` needs `Authorization: Bearer` with a token of `admin.token_file`\n",
            )
                .into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"stepgate-admin\""),
            );
            response
        }
    }
}

/// Serves the admin routes on `listener` until `shutdown` resolves,
/// `/metrics` behind `control`'s admin token if it has one.
///
/// # Errors
/// The listener fails.
pub async fn serve(
    ready: Readiness,
    control: Option<Arc<AccessControl>>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), HttpError> {
    axum::serve(listener, router(ready, control))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
