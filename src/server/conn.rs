//! Accepted connections for both decision listeners: plain TCP, or TLS
//! with the settings in force at accept time, handshakes done off the
//! accept loop so a slow or silent client holds up no one else. Each
//! connection carries a [`PeerInfo`]: the peer's address and, over mTLS,
//! the names of its verified client certificate.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::access::PeerIdentity;
use crate::access::reload::{AccessControl, Listener};

/// How long a client gets to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections accepted but not yet taken by the server.
const BACKLOG: usize = 1024;

/// What is known of a connection's peer.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: SocketAddr,
    /// The verified client certificate's names (mTLS only).
    pub certificate: Option<Arc<PeerIdentity>>,
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// One accepted connection.
pub struct Connection {
    stream: Stream,
    peer: PeerInfo,
}

impl Connection {
    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

/// The accepted connections of one listener, for axum (and, as a stream,
/// for tonic).
pub struct Incoming {
    connections: mpsc::Receiver<Connection>,
    local: SocketAddr,
}

impl Incoming {
    /// A stream of connections, as tonic's `serve_with_incoming` takes.
    pub fn into_stream(
        self,
    ) -> impl tokio_stream::Stream<Item = Result<Connection, std::io::Error>> {
        tokio_stream::StreamExt::map(
            tokio_stream::wrappers::ReceiverStream::new(self.connections),
            Ok::<_, std::io::Error>,
        )
    }
}

impl axum::serve::Listener for Incoming {
    type Io = Connection;
    type Addr = PeerInfo;

    async fn accept(&mut self) -> (Connection, PeerInfo) {
        match self.connections.recv().await {
            Some(connection) => {
                let peer = connection.peer.clone();
                (connection, peer)
            }
            // The accept task only ends when this receiver is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<PeerInfo> {
        Ok(PeerInfo {
            remote: self.local,
            certificate: None,
        })
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Incoming>>
    for PeerInfo
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, Incoming>) -> Self {
        stream.remote_addr().clone()
    }
}

/// Accepts connections on `listener`, over TLS when `control` has settings
/// for `which`, until the returned [`Incoming`] is dropped.
///
/// # Errors
/// The listener's own address cannot be read.
pub fn accept(
    listener: TcpListener,
    control: Arc<AccessControl>,
    which: Listener,
) -> std::io::Result<Incoming> {
    let local = listener.local_addr()?;
    let (tx, rx) = mpsc::channel(BACKLOG);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let (tcp, remote) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait, go on.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Answers are small and latency-bound: no Nagle delay.
            let _ = tcp.set_nodelay(true);
            match control.tls(which) {
                None => {
                    let connection = Connection {
                        stream: Stream::Plain(tcp),
                        peer: PeerInfo {
                            remote,
                            certificate: None,
                        },
                    };
                    if tx.send(connection).await.is_err() {
                        return;
                    }
                }
                Some(settings) => {
                    let tx = tx.clone();
                    let control = control.clone();
                    tokio::spawn(async move {
                        if let Some(connection) = handshake(tcp, remote, settings, &control).await {
                            let _ = tx.send(connection).await;
                        }
                    });
                }
            }
        }
    });
    Ok(Incoming {
        connections: rx,
        local,
    })
}

async fn handshake(
    tcp: TcpStream,
    remote: SocketAddr,
    settings: Arc<rustls::ServerConfig>,
    control: &AccessControl,
) -> Option<Connection> {
    let acceptor = tokio_rustls::TlsAcceptor::from(settings);
    let failed = |reason: String| {
        control.metrics().refused(
            "tls_handshake",
            crate::access::UNAUTHENTICATED,
            crate::fault::FaultKind::Unauthenticated.code(),
        );
        tracing::info!(
            client = %crate::record::privacy::truncate_ip(remote.ip()),
            reason,
            "TLS handshake refused"
        );
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => {
            let certificate = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|leaf| Arc::new(PeerIdentity::of_certificate(leaf)));
            Some(Connection {
                stream: Stream::Tls(Box::new(tls)),
                peer: PeerInfo {
                    remote,
                    certificate,
                },
            })
        }
        Ok(Err(error)) => {
            failed(error.to_string());
            None
        }
        Err(_) => {
            failed(format!(
                "no handshake within {} s",
                HANDSHAKE_TIMEOUT.as_secs()
            ));
            None
        }
    }
}
