//! A connection that is plain TCP or TLS over TCP, for either side: [`ClientSide`] (a client
//! whose TLS sluice terminated) and [`BackendStream`] (a backend sluice speaks TLS to).
//!
//! The L7 code reads and writes through it without knowing which; only the relay asks: plain
//! sockets on both sides splice, TLS on either side means bytes encrypted or decrypted in user
//! space, so the tunnel copies.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Plain TCP, or TLS over it (boxed: the TLS state is large and must not grow every
/// connection's future while the connection is plain).
#[derive(Debug)]
pub enum MaybeTls<T> {
    Plain(TcpStream),
    Tls(Box<T>),
}

/// A client connection whose TLS sluice terminated, or a plain one.
pub type ClientSide = MaybeTls<tokio_rustls::server::TlsStream<TcpStream>>;

/// A connection to a backend: plain TCP, or TLS over it (`wss` upstream).
pub type BackendStream = MaybeTls<tokio_rustls::client::TlsStream<TcpStream>>;

/// What a TLS stream over TCP offers besides reading and writing.
pub trait TlsOverTcp {
    /// The TCP socket underneath.
    fn tcp(&self) -> &TcpStream;
    /// Whether the TLS session needs more bytes from the socket to make progress (nothing
    /// decrypted is waiting to be read).
    fn wants_read(&self) -> bool;
}

impl TlsOverTcp for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
    fn wants_read(&self) -> bool {
        self.get_ref().1.wants_read()
    }
}

impl TlsOverTcp for tokio_rustls::client::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
    fn wants_read(&self) -> bool {
        self.get_ref().1.wants_read()
    }
}

impl<T: TlsOverTcp> MaybeTls<T> {
    /// The TCP socket underneath (for socket options and liveness probes).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            MaybeTls::Plain(tcp) => tcp,
            MaybeTls::Tls(tls) => tls.tcp(),
        }
    }

    /// Waits until a read would not block: the socket is readable, or (TLS) decrypted bytes
    /// or the end of the stream are already buffered.
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            MaybeTls::Plain(tcp) => tcp.readable().await,
            MaybeTls::Tls(tls) => {
                if !tls.wants_read() {
                    return Ok(());
                }
                tls.tcp().readable().await
            }
        }
    }
}

impl<T> MaybeTls<T> {
    /// Whether the connection is TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, MaybeTls::Tls(_))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> MaybeTls<T> {
    /// Read and write halves usable at once: a plain socket's borrowed halves (no lock, as
    /// `TcpStream::split`), or a TLS stream's halves (`tokio::io::split`: one TLS session
    /// state, shared).
    pub fn split(&mut self) -> (ReadHalf<'_, T>, WriteHalf<'_, T>) {
        match self {
            MaybeTls::Plain(tcp) => {
                let (read, write) = tcp.split();
                (ReadHalf::Plain(read), WriteHalf::Plain(write))
            }
            MaybeTls::Tls(tls) => {
                let (read, write) = tokio::io::split(tls.as_mut());
                (ReadHalf::Tls(read), WriteHalf::Tls(write))
            }
        }
    }
}

/// The reading half of a [`MaybeTls`], from [`MaybeTls::split`].
#[derive(Debug)]
pub enum ReadHalf<'a, T> {
    Plain(tokio::net::tcp::ReadHalf<'a>),
    Tls(tokio::io::ReadHalf<&'a mut T>),
}

/// The writing half of a [`MaybeTls`], from [`MaybeTls::split`].
#[derive(Debug)]
pub enum WriteHalf<'a, T> {
    Plain(tokio::net::tcp::WriteHalf<'a>),
    Tls(tokio::io::WriteHalf<&'a mut T>),
}

/// Forwards a poll to whichever variant `$self` is, each pinned in place.
macro_rules! dispatch {
    ($self:expr, $inner:ident => $call:expr) => {
        match $self.get_mut() {
            Self::Plain($inner) => {
                let $inner = Pin::new($inner);
                $call
            }
            Self::Tls($inner) => {
                let $inner = Pin::new(&mut **$inner);
                $call
            }
        }
    };
}

/// As [`dispatch!`], for the halves (whose TLS variant is not boxed).
macro_rules! dispatch_half {
    ($self:expr, $inner:ident => $call:expr) => {
        match $self.get_mut() {
            Self::Plain($inner) => {
                let $inner = Pin::new($inner);
                $call
            }
            Self::Tls($inner) => {
                let $inner = Pin::new($inner);
                $call
            }
        }
    };
}

impl<T: AsyncRead + Unpin> AsyncRead for MaybeTls<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        dispatch!(self, io => io.poll_read(cx, buf))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for MaybeTls<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        dispatch!(self, io => io.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        dispatch!(self, io => io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        dispatch!(self, io => io.poll_shutdown(cx))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadHalf<'_, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        dispatch_half!(self, io => io.poll_read(cx, buf))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteHalf<'_, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        dispatch_half!(self, io => io.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        dispatch_half!(self, io => io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        dispatch_half!(self, io => io.poll_shutdown(cx))
    }
}
