//! One DNS question to a list of name servers: UDP first, TCP when the answer is truncated
//! (RFC 1035 §4.2, RFC 7766), each server in turn until one gives an answer that counts.
//!
//! An answer counts when its code is NOERROR or NXDOMAIN: the server knows. SERVFAIL, REFUSED
//! and the other codes, timeouts and I/O errors move on to the next server; when none is left,
//! the last failure is the result.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{Instant, timeout_at};

/// What sluice tells servers it can take over UDP (the DNS flag day 2020 value).
const UDP_PAYLOAD: u16 = 1232;

/// Why no server answered in a way that counts.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The last server asked answered with this code (SERVFAIL, REFUSED, …).
    #[error("the name server answered {0}")]
    Rcode(ResponseCode),
    /// The last server asked did not answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Sending or receiving failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The answer did not parse, or did not answer the question asked.
    #[error("malformed answer: {0}")]
    Malformed(String),
    /// There was no server to ask.
    #[error("no name server to ask (none configured and none in /etc/resolv.conf)")]
    NoServers,
}

/// Asks `servers` in order for the `rtype` records of `name`, each within `timeout`; returns
/// the first answer whose code is NOERROR or NXDOMAIN.
pub(crate) async fn query(
    servers: &[SocketAddr],
    name: &Name,
    rtype: RecordType,
    timeout: Duration,
) -> Result<Message, QueryError> {
    let mut last = QueryError::NoServers;
    for &server in servers {
        match ask(server, name, rtype, timeout).await {
            Ok(answer) => match answer.response_code() {
                ResponseCode::NoError | ResponseCode::NXDomain => return Ok(answer),
                code => last = QueryError::Rcode(code),
            },
            Err(error) => last = error,
        }
        tracing::debug!(%server, %name, ?rtype, error = %last, "name server failed; trying the next");
    }
    Err(last)
}

/// One server: UDP, then TCP when the UDP answer is truncated.
async fn ask(
    server: SocketAddr,
    name: &Name,
    rtype: RecordType,
    timeout: Duration,
) -> Result<Message, QueryError> {
    let deadline = Instant::now() + timeout;
    let id: u16 = rand::random();
    let request = request(id, name, rtype)?;
    let question = Question { id, name, rtype };
    let answer = timeout_at(deadline, udp(server, &request, &question))
        .await
        .map_err(|_| QueryError::Timeout(timeout))??;
    if !answer.truncated() {
        return Ok(answer);
    }
    let deadline = Instant::now() + timeout;
    timeout_at(deadline, tcp(server, &request, &question))
        .await
        .map_err(|_| QueryError::Timeout(timeout))?
}

fn request(id: u16, name: &Name, rtype: RecordType) -> Result<Vec<u8>, QueryError> {
    let mut message = Message::new();
    message
        .set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(name.clone(), rtype));
    let mut edns = Edns::new();
    edns.set_max_payload(UDP_PAYLOAD);
    message.set_edns(edns);
    message
        .to_vec()
        .map_err(|e| QueryError::Malformed(e.to_string()))
}

/// What an answer must answer.
struct Question<'a> {
    id: u16,
    name: &'a Name,
    rtype: RecordType,
}

async fn udp(
    server: SocketAddr,
    request: &[u8],
    question: &Question<'_>,
) -> Result<Message, QueryError> {
    let local: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    // Connected: the kernel drops datagrams from any other address; a random source port and
    // id make a forged answer hard to guess.
    let socket = UdpSocket::bind(local).await?;
    socket.connect(server).await?;
    socket.send(request).await?;
    let mut buf = vec![0u8; usize::from(UDP_PAYLOAD).max(512) + 512];
    loop {
        let n = socket.recv(&mut buf).await?;
        // Anything that is not the answer to this question is ignored (a late answer to an
        // earlier query, garbage): the deadline bounds the wait.
        if let Some(answer) = buf.get(..n).and_then(|b| answer_to(b, question)) {
            return Ok(answer);
        }
    }
}

async fn tcp(
    server: SocketAddr,
    request: &[u8],
    question: &Question<'_>,
) -> Result<Message, QueryError> {
    let mut stream = TcpStream::connect(server).await?;
    let len =
        u16::try_from(request.len()).map_err(|_| QueryError::Malformed("query too long".into()))?;
    let mut framed = Vec::with_capacity(request.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(request);
    stream.write_all(&framed).await?;
    let len = stream.read_u16().await?;
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await?;
    answer_to(&buf, question)
        .ok_or_else(|| QueryError::Malformed("the TCP answer does not match the question".into()))
}

/// The message in `bytes` if it is the answer to this question.
fn answer_to(bytes: &[u8], question: &Question<'_>) -> Option<Message> {
    let message = Message::from_vec(bytes).ok()?;
    let matches = message.id() == question.id
        && message.message_type() == MessageType::Response
        && message
            .queries()
            .iter()
            .any(|q| q.query_type() == question.rtype && q.name() == question.name);
    matches.then_some(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_answer_to_the_question_is_taken() {
        let name = Name::from_ascii("ws.example.").unwrap();
        let mut answer = Message::new();
        answer
            .set_id(7)
            .set_message_type(MessageType::Response)
            .add_query(Query::query(name.clone(), RecordType::A));
        let bytes = answer.to_vec().unwrap();
        let other = Name::from_ascii("other.example.").unwrap();
        let q = |id, name| Question {
            id,
            name,
            rtype: RecordType::A,
        };
        assert!(answer_to(&bytes, &q(7, &name)).is_some());
        assert!(answer_to(&bytes, &q(8, &name)).is_none(), "id");
        assert!(answer_to(&bytes, &q(7, &other)).is_none(), "name");
        let aaaa = Question {
            rtype: RecordType::AAAA,
            ..q(7, &name)
        };
        assert!(answer_to(&bytes, &aaaa).is_none(), "type");
        assert!(answer_to(b"\x00\x07garbage", &q(7, &name)).is_none());
        assert!(answer_to(&[], &q(7, &name)).is_none());
    }
}
