//! The `stepgate` subcommands, one file each, and what several of them
//! share: logging, the client connection and its flags, the suite runner.

pub mod decide;
pub mod loadtest;
pub mod policy_explain;
pub mod policy_test;
pub mod policy_validate;
pub mod replay;
pub mod report;
pub mod serve;

use std::sync::Arc;

use clap::Args;
use stepgate::config::{Config, LogFormat};
use stepgate::server::proto;
use stepgate::server::proto::decision_service_client::DecisionServiceClient;

/// Who and what a client subcommand asks about.
#[derive(Args)]
pub struct Target {
    /// Service address: `http://host:port`, or `https://host:port` for a
    /// listener with `[tls]` (then `--ca-file` is required).
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// A file holding this caller's bearer token (`[[callers]]
    /// token_file` on the server).
    #[arg(long, env = "STEPGATE_TOKEN_FILE")]
    pub token_file: Option<std::path::PathBuf>,
    /// CA certificates (PEM) the server's certificate must chain to.
    #[arg(long, env = "STEPGATE_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    /// This caller's client certificate (PEM), for mTLS; with `--key-file`.
    #[arg(long, env = "STEPGATE_CERT_FILE", requires = "key_file")]
    pub cert_file: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "STEPGATE_KEY_FILE", requires = "cert_file")]
    pub key_file: Option<std::path::PathBuf>,
    /// Journey name, e.g. `login`.
    #[arg(long)]
    pub journey: String,
    /// User id.
    #[arg(long)]
    pub user: String,
    /// Tenant.
    #[arg(long, default_value = "")]
    pub tenant: String,
    /// Client IP address.
    #[arg(long)]
    pub ip: String,
    /// Device id.
    #[arg(long, default_value = "")]
    pub device: String,
}

/// The service's own log: to stderr (stdout carries the decision log), in
/// the configured format and level (`RUST_LOG` wins).
pub fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal, never in a file or a pipe.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// A client of the decision service at `addr`.
pub async fn connect(
    target: &Target,
) -> miette::Result<DecisionServiceClient<tonic::transport::Channel>> {
    let addr = &target.addr;
    let failed = |e: &dyn std::fmt::Display| miette::miette!("cannot connect to `{addr}`: {e}");
    let Some(rest) = addr.strip_prefix("https://") else {
        if target.ca_file.is_some() || target.cert_file.is_some() {
            return Err(miette::miette!(
                "`--addr {addr}` is not `https://`, so `--ca-file` and `--cert-file` would not be used"
            ));
        }
        return DecisionServiceClient::connect(addr.clone())
            .await
            .map_err(|e| failed(&e));
    };
    let ca = target.ca_file.as_deref().ok_or_else(|| {
        miette::miette!("`--addr {addr}` speaks TLS: `--ca-file` names the CA to trust")
    })?;
    let authority = rest.trim_end_matches('/').to_owned();
    let host = authority
        .rsplit_once(':')
        .map_or(authority.as_str(), |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let name = rustls::pki_types::ServerName::try_from(host)
        .map_err(|e| miette::miette!("`--addr {addr}`: not a server name: {e}"))?;
    let tls = client_tls(
        ca,
        target.cert_file.as_deref().zip(target.key_file.as_deref()),
    )?;
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{authority}"))
        .map_err(|e| failed(&e))?;
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_uri: tonic::codegen::http::Uri| {
            let (tls, name, authority) = (tls.clone(), name.clone(), authority.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(&authority).await?;
                let stream = tokio_rustls::TlsConnector::from(tls)
                    .connect(name, tcp)
                    .await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| failed(&e))?;
    Ok(DecisionServiceClient::new(channel))
}

/// TLS settings of a client trusting `ca`, presenting `identity` (a
/// certificate and key file) when given.
fn client_tls(
    ca: &std::path::Path,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> miette::Result<std::sync::Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read = |path: &std::path::Path, e: &dyn std::fmt::Display| {
        miette::miette!("`{}`: {e}", path.display())
    };
    let certificates = |path: &std::path::Path| {
        CertificateDer::pem_file_iter(path)
            .map_err(|e| read(path, &e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| read(path, &e))
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(ca)? {
        roots.add(cert).map_err(|e| read(ca, &e))?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| miette::miette!("TLS: {e}"))?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                certificates(cert)?,
                PrivateKeyDer::from_pem_file(key).map_err(|e| read(key, &e))?,
            )
            .map_err(|e| read(key, &e))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(std::sync::Arc::new(config))
}

/// `message` as a request carrying the caller's token, if `target` names
/// one.
pub fn request<T>(target: &Target, message: T) -> miette::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    if let Some(path) = &target.token_file {
        let tokens = stepgate::access::read_tokens(path)?;
        let token = tokens
            .first()
            .ok_or_else(|| miette::miette!("`{}` holds no token", path.display()))?;
        let mut value = b"Bearer ".to_vec();
        value.extend_from_slice(token.bytes());
        let value = tonic::metadata::MetadataValue::try_from(value.as_slice())
            .map_err(|e| miette::miette!("`{}`: {e}", path.display()))?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(request)
}

/// The subject, device and network of a request, from the flags.
pub fn target_parts(
    t: &Target,
) -> (
    Option<proto::Subject>,
    Option<proto::Device>,
    Option<proto::Network>,
) {
    (
        Some(proto::Subject {
            user_id: t.user.clone(),
            tenant: t.tenant.clone(),
        }),
        (!t.device.is_empty()).then(|| proto::Device {
            id: t.device.clone(),
            user_agent: String::new(),
        }),
        Some(proto::Network { ip: t.ip.clone() }),
    )
}

/// A status as a one-line error: code and message.
pub fn status_error(status: tonic::Status) -> miette::Report {
    miette::miette!("{:?}: {}", status.code(), status.message())
}

/// A call's failure as the client reports it; over TLS, a call that died
/// with its connection most likely met a refused handshake, which the
/// server only tells in its own log.
pub fn call_error(target: &Target, status: tonic::Status) -> miette::Report {
    let connection_died = matches!(status.code(), tonic::Code::Unknown | tonic::Code::Cancelled)
        && target.addr.starts_with("https://");
    if connection_died {
        miette::miette!(
            "{:?}: {}; the server may have refused the TLS handshake (a client certificate it does not trust, one that expired, or one from another CA: its log says which)",
            status.code(),
            status.message()
        )
    } else {
        status_error(status)
    }
}

/// What `policy test` and `policy explain` run cases with.
pub fn runner(
    dir: &std::path::Path,
    config: Option<&std::path::Path>,
) -> miette::Result<stepgate::suites::Runner> {
    let config = match config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let snapshot = stepgate::policy::PolicySnapshot::load(dir)?;
    let deny_list = stepgate::signals::IpList::load(&config.ip_lists.deny)?;
    let geo = Arc::new(stepgate::geo::GeoDatabases::open(&config.geo.databases())?);
    Ok(stepgate::suites::Runner::new(
        Arc::new(snapshot),
        Arc::new(config),
        deny_list,
        geo,
    ))
}

/// Prints each problem in the suites on a line of its own, unwrapped, so
/// editors and CI can jump to them; the error says how many there were.
pub fn suite_errors(errors: &[stepgate::suites::SuiteError]) -> miette::Report {
    for error in errors {
        println!("error: {error}");
    }
    miette::miette!(
        "{} problem(s) in the test suites; no case ran",
        errors.len()
    )
}
