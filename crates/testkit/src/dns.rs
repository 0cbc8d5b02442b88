//! A small authoritative DNS server on loopback, UDP and TCP on the same port, whose records
//! and failure mode a test changes while it runs: the other end of sluice's DNS discovery.
//!
//! It answers A, AAAA and SRV questions from its table (NXDOMAIN for a name it does not know,
//! an empty NOERROR for a known name without records of the type asked), with the SRV targets'
//! addresses in the additional section unless told not to. [`DnsServer::fail`] makes every
//! answer a SERVFAIL, a REFUSED, or silence (a timeout for the client);
//! [`DnsServer::truncate_udp`] sets TC on every UDP answer so the client must retry over TCP.
//! Messages are built and parsed by `hickory-proto`.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

/// How the server answers every question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsMode {
    /// From its records.
    Answer,
    /// SERVFAIL.
    ServFail,
    /// REFUSED.
    Refused,
    /// Nothing at all: the client times out.
    Silent,
}

/// One SRV record of [`DnsServer::set_srv`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvRecord {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// A name the server may also hold addresses for (with [`DnsServer::set_addrs`]).
    pub target: String,
}

#[derive(Debug, Default)]
struct Zone {
    addrs: HashMap<Name, (Vec<IpAddr>, u32)>,
    srv: HashMap<Name, (Vec<SrvRecord>, u32)>,
    mode: Option<DnsMode>,
    truncate_udp: bool,
    no_additionals: bool,
}

#[derive(Debug, Default)]
struct State {
    zone: Mutex<Zone>,
    questions: AtomicUsize,
}

/// A running DNS server; dropping it stops it.
#[derive(Debug)]
pub struct DnsServer {
    addr: SocketAddr,
    state: Arc<State>,
    tasks: Vec<JoinHandle<()>>,
}

impl DnsServer {
    /// A server on 127.0.0.1, UDP and TCP on one free port, with no records.
    ///
    /// # Panics
    /// If no port free for both UDP and TCP is found in a few tries.
    pub async fn spawn() -> Self {
        let (udp, tcp) = bind_pair().await.expect("bind a DNS server on 127.0.0.1");
        let addr = udp.local_addr().expect("local address");
        let state = Arc::new(State::default());
        let tasks = vec![
            tokio::spawn(serve_udp(udp, Arc::clone(&state))),
            tokio::spawn(serve_tcp(tcp, Arc::clone(&state))),
        ];
        Self { addr, state, tasks }
    }

    /// The address clients ask (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets the addresses of `name` (A for IPv4, AAAA for IPv6), replacing any; an empty list
    /// keeps the name known with no address (an empty NOERROR answer).
    pub fn set_addrs(&self, name: &str, ips: &[IpAddr], ttl: u32) {
        self.zone().addrs.insert(name_of(name), (ips.to_vec(), ttl));
    }

    /// Sets the SRV records of `name`, replacing any.
    pub fn set_srv(&self, name: &str, records: &[SrvRecord], ttl: u32) {
        self.zone()
            .srv
            .insert(name_of(name), (records.to_vec(), ttl));
    }

    /// Forgets every record of `name`: it no longer exists (NXDOMAIN).
    pub fn remove(&self, name: &str) {
        let name = name_of(name);
        let mut zone = self.zone();
        zone.addrs.remove(&name);
        zone.srv.remove(&name);
    }

    /// How every question is answered from now on.
    pub fn fail(&self, mode: DnsMode) {
        self.zone().mode = Some(mode);
    }

    /// Sets TC on every UDP answer (with no record in it), so clients retry over TCP.
    pub fn truncate_udp(&self, on: bool) {
        self.zone().truncate_udp = on;
    }

    /// Leaves SRV targets' addresses out of the additional section, so clients ask for them.
    pub fn no_additionals(&self, on: bool) {
        self.zone().no_additionals = on;
    }

    /// Questions received so far, answered or not, over UDP and TCP.
    pub fn questions(&self) -> usize {
        self.state.questions.load(Ordering::SeqCst)
    }

    fn zone(&self) -> std::sync::MutexGuard<'_, Zone> {
        self.state
            .zone
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn name_of(name: &str) -> Name {
    let name = name.trim_end_matches('.');
    Name::from_ascii(format!("{name}."))
        .expect("a valid DNS name")
        .to_lowercase()
}

/// A UDP socket and a TCP listener on the same 127.0.0.1 port.
async fn bind_pair() -> io::Result<(UdpSocket, TcpListener)> {
    let mut last = None;
    for _ in 0..20 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let port = udp.local_addr()?.port();
        match TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no port")))
}

async fn serve_udp(socket: UdpSocket, state: Arc<State>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        if let Some(answer) = buf.get(..n).and_then(|q| answer(&state, q, true)) {
            let _ = socket.send_to(&answer, peer).await;
        }
    }
}

async fn serve_tcp(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(serve_tcp_conn(stream, Arc::clone(&state)));
    }
}

async fn serve_tcp_conn(mut stream: TcpStream, state: Arc<State>) {
    loop {
        let Ok(len) = stream.read_u16().await else {
            return;
        };
        let mut query = vec![0u8; usize::from(len)];
        if stream.read_exact(&mut query).await.is_err() {
            return;
        }
        let Some(answer) = answer(&state, &query, false) else {
            continue;
        };
        let Ok(len) = u16::try_from(answer.len()) else {
            return;
        };
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(&answer);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

/// The encoded answer to the query in `bytes`; `None`: stay silent.
fn answer(state: &State, bytes: &[u8], udp: bool) -> Option<Vec<u8>> {
    let query = Message::from_vec(bytes).ok()?;
    state.questions.fetch_add(1, Ordering::SeqCst);
    let question = query.queries().first()?.clone();
    let mut reply = Message::new();
    reply
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_authoritative(true)
        .set_recursion_desired(query.recursion_desired())
        .add_query(question.clone());
    let zone = state.zone.lock().unwrap_or_else(PoisonError::into_inner);
    match zone.mode.unwrap_or(DnsMode::Answer) {
        DnsMode::Silent => return None,
        DnsMode::ServFail => {
            reply.set_response_code(ResponseCode::ServFail);
            return reply.to_vec().ok();
        }
        DnsMode::Refused => {
            reply.set_response_code(ResponseCode::Refused);
            return reply.to_vec().ok();
        }
        DnsMode::Answer => {}
    }
    let name = question.name().to_lowercase();
    if !zone.addrs.contains_key(&name) && !zone.srv.contains_key(&name) {
        reply.set_response_code(ResponseCode::NXDomain);
        return reply.to_vec().ok();
    }
    if udp && zone.truncate_udp {
        reply.set_truncated(true);
        return reply.to_vec().ok();
    }
    match question.query_type() {
        RecordType::A | RecordType::AAAA => {
            reply.add_answers(addr_records(&zone, &name, question.query_type()));
        }
        RecordType::SRV => {
            if let Some((records, ttl)) = zone.srv.get(&name) {
                for srv in records {
                    let target = name_of(&srv.target);
                    reply.add_answer(Record::from_rdata(
                        name.clone(),
                        *ttl,
                        RData::SRV(SRV::new(srv.priority, srv.weight, srv.port, target.clone())),
                    ));
                    if !zone.no_additionals {
                        reply.add_additionals(addr_records(&zone, &target, RecordType::A));
                        reply.add_additionals(addr_records(&zone, &target, RecordType::AAAA));
                    }
                }
            }
        }
        _ => {}
    }
    reply.to_vec().ok()
}

fn addr_records(zone: &Zone, name: &Name, rtype: RecordType) -> Vec<Record> {
    let Some((ips, ttl)) = zone.addrs.get(name) else {
        return Vec::new();
    };
    ips.iter()
        .filter_map(|ip| match (ip, rtype) {
            (IpAddr::V4(v4), RecordType::A) => Some(RData::A(A(*v4))),
            (IpAddr::V6(v6), RecordType::AAAA) => Some(RData::AAAA(AAAA(*v6))),
            _ => None,
        })
        .map(|data| Record::from_rdata(name.clone(), *ttl, data))
        .collect()
}
