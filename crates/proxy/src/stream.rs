//! The client side of a connection: plain TCP, or TLS terminated by sluice.
//!
//! The L7 act and the plain-HTTP loop read and write through [`ClientStream`]; only the relay
//! needs to know which it is: plain sockets splice, TLS-terminated ones are relayed by copy
//! (the bytes are decrypted in user space). The type is `sluice_tls::MaybeTls`, the same one
//! backend connections use (`BackendStream`).

/// A client connection as the L7 act sees it.
pub(crate) type ClientStream = sluice_tls::ClientSide;
