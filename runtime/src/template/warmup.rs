//! Priming: requests a function serves before its template is taken, so that what its
//! first request would do once per process (a language runtime compiling the request's code
//! on its first call, as V8 does; modules imported lazily; caches filled) is in the
//! template, and every instance restored from it answers its first request as a warm one.
//!
//! Asked for with `io.trenv.template.warmup=[METHOD ]URL` (and `…warmup-body`,
//! `…warmup-requests`) next to `io.trenv.template.create`, or the same keys of a
//! `[[functions]]` rule. The URL must name the container's own loopback
//! (`http://127.0.0.1:PORT/PATH`, `localhost` or `[::1]`): the shim, which runs as root,
//! sends the requests from inside the container's network namespace, so a pod author
//! reaches nothing through it that the container could not reach itself; a container in
//! the host's network namespace gets no warm-up (and no template). The answers' bodies are
//! read and dropped (at most [`MAX_ANSWER`] bytes each); a status other than 2xx, a
//! connection refused or a request longer than [`REQUEST_TIMEOUT`] means no template.
//!
//! After the last answer, the shim waits until the function has closed the warm-up's
//! connections ([`open_server_sides`]): CRIU refuses to dump an established TCP socket.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// At most this many warm-up requests.
pub const MAX_REQUESTS: u32 = 1000;
/// The longest body a warm-up request may carry.
pub const MAX_BODY: usize = 64 * 1024;
/// The longest path (with its query).
pub const MAX_PATH: usize = 2048;
/// How much of an answer is read before the connection is closed.
pub const MAX_ANSWER: usize = 16 * 1024 * 1024;
/// How long one request may take, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the function may take to close a warm-up's connection after its answer.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WarmupError {
    #[error(
        "{0:?}: expected [METHOD ]http://127.0.0.1:PORT/PATH (or localhost, [::1]): the \
         container's own loopback; METHOD is GET (default), POST or PUT"
    )]
    BadRequest(String),
    #[error("{0:?}: expected a number of warm-up requests from 1 to {MAX_REQUESTS} (default 1)")]
    BadCount(String),
    #[error("a warm-up body of {0} bytes: at most {MAX_BODY}")]
    BodyTooLong(usize),
    #[error("a warm-up body or number of requests needs the warm-up request itself ([METHOD ]URL)")]
    BodyWithoutRequest,
    #[error(
        "the container shares the host's network namespace: no warm-up request is sent into \
         it (run it in a network namespace of its own)"
    )]
    HostNetwork,
    #[error("entering the container's network namespace: {0}")]
    Namespace(String),
    #[error("warm-up request {n} ({target}): {what}")]
    Failed {
        n: u32,
        target: String,
        what: String,
    },
    #[error("warm-up request {n} ({target}) answered {status}: expected 2xx")]
    Status { n: u32, target: String, status: u16 },
}

/// The method of a warm-up request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Method {
    Get,
    Post,
    Put,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
        }
    }
}

/// The warm-up of a template: `requests` times the same request to the container's own
/// loopback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warmup {
    pub method: Method,
    pub addr: SocketAddr,
    /// Starts with `/`; printable ASCII without spaces.
    pub path: String,
    pub body: Option<String>,
    pub requests: u32,
}

impl Warmup {
    /// The warm-up that `request` (`[METHOD ]URL`), `body` and `requests` (the values of the
    /// annotations or rule keys, `""` when unset) ask for; `None` when none is.
    pub fn parse(request: &str, body: &str, requests: &str) -> Result<Option<Warmup>, WarmupError> {
        let request = request.trim();
        if request.is_empty() {
            return if body.is_empty() && requests.is_empty() {
                Ok(None)
            } else {
                Err(WarmupError::BodyWithoutRequest)
            };
        }
        let bad = || WarmupError::BadRequest(request.into());
        let (method, url) = match request.split_once(' ') {
            Some((m, url)) => {
                let method = match m {
                    "GET" => Method::Get,
                    "POST" => Method::Post,
                    "PUT" => Method::Put,
                    _ => return Err(bad()),
                };
                (method, url.trim_start())
            }
            None => (Method::Get, request),
        };
        let rest = url.strip_prefix("http://").ok_or_else(bad)?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, "/"),
        };
        // `[v6]:port`, `host:port`, or either without a port.
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => v6.split_once(']').ok_or_else(bad)?,
            None => match authority.find(':') {
                Some(i) => authority.split_at(i),
                None => (authority, ""),
            },
        };
        let ip = match host {
            "127.0.0.1" | "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
            "::1" => IpAddr::V6(Ipv6Addr::LOCALHOST),
            _ => return Err(bad()),
        };
        let port = match port {
            "" => 80,
            p => p
                .strip_prefix(':')
                .and_then(|p| p.parse::<u16>().ok())
                .filter(|p| *p > 0)
                .ok_or_else(bad)?,
        };
        let plain = path.len() <= MAX_PATH && path.bytes().all(|b| b.is_ascii_graphic());
        if !plain {
            return Err(bad());
        }
        if body.len() > MAX_BODY {
            return Err(WarmupError::BodyTooLong(body.len()));
        }
        let requests = match requests.trim() {
            "" => 1,
            n => n
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_REQUESTS).contains(n))
                .ok_or_else(|| WarmupError::BadCount(n.into()))?,
        };
        Ok(Some(Warmup {
            method,
            addr: SocketAddr::new(ip, port),
            path: path.into(),
            body: Some(body.to_string()).filter(|b| !b.is_empty()),
            requests,
        }))
    }

    /// What the request is, for messages: `POST http://127.0.0.1:8080/`.
    pub fn target(&self) -> String {
        format!("{} http://{}{}", self.method.as_str(), self.addr, self.path)
    }

    /// The bytes of one request (HTTP/1.1, `Connection: close`): a JSON body is sent as
    /// `application/json`, another as `text/plain`.
    pub fn request_bytes(&self) -> Vec<u8> {
        let body = self.body.as_deref().unwrap_or("");
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: trenv-warmup\r\nAccept: */*\r\n\
             Connection: close\r\n",
            self.method.as_str(),
            self.path,
            self.addr
        );
        if self.body.is_some() || self.method != Method::Get {
            let json = serde_json::from_str::<serde_json::Value>(body).is_ok();
            head.push_str(&format!(
                "Content-Type: {}\r\nContent-Length: {}\r\n",
                if json {
                    "application/json"
                } else {
                    "text/plain; charset=utf-8"
                },
                body.len()
            ));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body.as_bytes());
        bytes
    }

    /// Sends the warm-up's requests, one after the other, to the function whose process
    /// `pid` runs in the container's network namespace, from a thread that enters it; waits
    /// until the function has closed their connections. Returns how long it took.
    pub fn send(&self, pid: i32) -> Result<Duration, WarmupError> {
        let began = Instant::now();
        let ns_path = format!("/proc/{pid}/ns/net");
        let theirs =
            std::fs::metadata(&ns_path).map_err(|e| WarmupError::Namespace(e.to_string()))?;
        let ours = std::fs::metadata("/proc/self/ns/net")
            .map_err(|e| WarmupError::Namespace(e.to_string()))?;
        if same_file(&theirs, &ours) {
            return Err(WarmupError::HostNetwork);
        }
        let ns =
            std::fs::File::open(&ns_path).map_err(|e| WarmupError::Namespace(e.to_string()))?;
        let this = self.clone();
        // A thread of its own: network namespaces are per thread, and it ends with them.
        let sent = std::thread::Builder::new()
            .name("warmup".into())
            .spawn(move || -> Result<(), WarmupError> {
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| WarmupError::Namespace(e.to_string()))?;
                for n in 1..=this.requests {
                    let local = this.one(n)?;
                    this.wait_closed(pid, n, local)?;
                }
                Ok(())
            })
            .map_err(|e| WarmupError::Namespace(format!("no thread: {e}")))?;
        sent.join()
            .map_err(|_| WarmupError::Namespace("the warm-up thread panicked".into()))??;
        Ok(began.elapsed())
    }

    /// Request `n`: connects, sends, reads the answer to its end (or [`MAX_ANSWER`]),
    /// checks its status. Returns the client's own address (to find the function's side).
    fn one(&self, n: u32) -> Result<SocketAddr, WarmupError> {
        let failed = |what: String| WarmupError::Failed {
            n,
            target: self.target(),
            what,
        };
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let mut s = TcpStream::connect_timeout(&self.addr, REQUEST_TIMEOUT).map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::NetworkUnreachable {
                " (the container's loopback is down: a network namespace that no network \
                 was attached to has it down; attach one, e.g. io.trenv.network)"
            } else {
                ""
            };
            failed(format!("connecting: {e}{hint}"))
        })?;
        let local = s.local_addr().map_err(|e| failed(e.to_string()))?;
        s.set_write_timeout(Some(REQUEST_TIMEOUT))
            .and_then(|()| s.write_all(&self.request_bytes()))
            .map_err(|e| failed(format!("sending: {e}")))?;
        // To its end: the server closes the connection (as asked), or its Content-Length
        // is read (a server that keeps the connection open anyway).
        let mut answer = Reading::default();
        let mut buf = [0u8; 64 * 1024];
        while !answer.complete() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(failed(format!(
                    "no complete answer within {} s",
                    REQUEST_TIMEOUT.as_secs()
                )));
            }
            s.set_read_timeout(Some(left))
                .map_err(|e| failed(e.to_string()))?;
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => answer.push(&buf[..k]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(failed(format!("reading the answer: {e}"))),
            }
        }
        drop(s);
        let answer = answer.head;
        match status_of(&answer) {
            Some(status) if (200..300).contains(&status) => Ok(local),
            Some(status) => Err(WarmupError::Status {
                n,
                target: self.target(),
                status,
            }),
            None => Err(failed(format!(
                "no HTTP answer: {:?}",
                String::from_utf8_lossy(&answer[..answer.len().min(200)])
            ))),
        }
    }

    /// Waits (up to [`CLOSE_TIMEOUT`]) until the function no longer holds the server side of
    /// request `n`'s connection, whose client end was `local`.
    fn wait_closed(&self, pid: i32, n: u32, local: SocketAddr) -> Result<(), WarmupError> {
        let began = Instant::now();
        loop {
            let tables = ["tcp", "tcp6"]
                .map(|t| std::fs::read_to_string(Path::new(&format!("/proc/{pid}/net/{t}"))));
            let open: usize = tables
                .iter()
                .flatten()
                .map(|table| open_server_sides(table, local.port()))
                .sum();
            if open == 0 {
                return Ok(());
            }
            if began.elapsed() > CLOSE_TIMEOUT {
                return Err(WarmupError::Failed {
                    n,
                    target: self.target(),
                    what: format!(
                        "the function still holds the connection {} s after its answer",
                        CLOSE_TIMEOUT.as_secs()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// The longest head of an answer that is kept (its status line and headers).
const MAX_HEAD: usize = 64 * 1024;

/// What has been read of an answer: its head (at most [`MAX_HEAD`] bytes) and how many bytes
/// in all; the body itself is dropped.
#[derive(Default)]
struct Reading {
    head: Vec<u8>,
    total: usize,
    /// Where the body starts (after the blank line), once the head is complete.
    body_at: Option<usize>,
    /// The head's Content-Length.
    length: Option<usize>,
}

impl Reading {
    fn push(&mut self, bytes: &[u8]) {
        self.total += bytes.len();
        if self.body_at.is_some() || self.head.len() >= MAX_HEAD {
            return;
        }
        let room = MAX_HEAD - self.head.len();
        self.head.extend_from_slice(&bytes[..bytes.len().min(room)]);
        let Some(end) = self.head.windows(4).position(|w| w == b"\r\n\r\n") else {
            return;
        };
        self.body_at = Some(end + 4);
        self.length = String::from_utf8_lossy(&self.head[..end])
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok());
    }

    /// The whole answer is read (by its Content-Length), or as much as is ever read
    /// ([`MAX_ANSWER`]).
    fn complete(&self) -> bool {
        let by_length =
            matches!((self.body_at, self.length), (Some(at), Some(n)) if self.total >= at + n);
        by_length || self.total >= MAX_ANSWER
    }
}

fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino()
}

/// The status code of an HTTP answer's first line (`HTTP/1.x NNN …`).
pub fn status_of(answer: &[u8]) -> Option<u16> {
    let line = answer.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split_whitespace();
    words.next().filter(|v| v.starts_with("HTTP/"))?;
    words
        .next()?
        .parse()
        .ok()
        .filter(|s| (100..600).contains(s))
}

/// How many sockets of a `/proc/net/tcp{,6}` table are the server side of a connection from
/// client port `port` in a state in which a process may still hold them (established,
/// SYN received, close wait): a dump would find them.
pub fn open_server_sides(table: &str, port: u16) -> usize {
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(remote), Some(state)) = (fields.get(2), fields.get(3)) else {
                return false;
            };
            let remote_port = remote
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            remote_port == Some(port) && matches!(*state, "01" | "03" | "08")
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(r: &str) -> Result<Option<Warmup>, WarmupError> {
        Warmup::parse(r, "", "")
    }

    #[test]
    fn a_request_to_the_container_s_own_loopback_is_taken_apart() {
        let w = parse("http://127.0.0.1:8080/health?x=1").unwrap().unwrap();
        assert_eq!(w.method, Method::Get);
        assert_eq!(w.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(w.path, "/health?x=1");
        assert_eq!(w.requests, 1);
        let w = Warmup::parse("POST http://localhost:8080", "{\"n\": 1}", "20")
            .unwrap()
            .unwrap();
        assert_eq!(
            (w.method, w.path.as_str(), w.requests),
            (Method::Post, "/", 20)
        );
        assert_eq!(w.addr, "127.0.0.1:8080".parse().unwrap());
        let w = parse("PUT http://[::1]:9000/a").unwrap().unwrap();
        assert_eq!(w.addr, "[::1]:9000".parse().unwrap());
        assert_eq!(parse("http://localhost/").unwrap().unwrap().addr.port(), 80);
        assert_eq!(Warmup::parse("", "", ""), Ok(None));
    }

    #[test]
    fn anything_but_the_container_s_own_loopback_over_plain_http_is_refused() {
        for bad in [
            "http://10.0.0.1:8080/",
            "http://example.com/",
            "http://127.0.0.2/",
            "http://localhost.evil.com/",
            "https://127.0.0.1/",
            "ftp://127.0.0.1/",
            "127.0.0.1:8080/",
            "DELETE http://127.0.0.1/",
            "http://127.0.0.1:0/",
            "http://127.0.0.1:99999/",
            "http://127.0.0.1:80:81/",
            "http://[::2]/",
            "http://127.0.0.1/a b",
            "http://127.0.0.1/a\r\nX-Injected: 1",
            "http://user@127.0.0.1/",
        ] {
            assert!(
                matches!(parse(bad), Err(WarmupError::BadRequest(_))),
                "{bad:?}: {:?}",
                parse(bad)
            );
        }
        assert_eq!(
            Warmup::parse("", "{}", ""),
            Err(WarmupError::BodyWithoutRequest)
        );
        for n in ["0", "1001", "-1", "x"] {
            assert_eq!(
                Warmup::parse("http://127.0.0.1/", "", n),
                Err(WarmupError::BadCount(n.into()))
            );
        }
        let long = "x".repeat(MAX_BODY + 1);
        assert_eq!(
            Warmup::parse("POST http://127.0.0.1/", &long, ""),
            Err(WarmupError::BodyTooLong(MAX_BODY + 1))
        );
    }

    #[test]
    fn the_request_says_its_length_and_whether_its_body_is_json() {
        let w = Warmup::parse("POST http://127.0.0.1:8080/", "{\"rounds\": 1}", "")
            .unwrap()
            .unwrap();
        let text = String::from_utf8(w.request_bytes()).unwrap();
        assert!(
            text.starts_with("POST / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"),
            "{text}"
        );
        assert!(text.contains("Content-Type: application/json\r\nContent-Length: 13\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\n{\"rounds\": 1}"), "{text}");
        let w = Warmup::parse("POST http://127.0.0.1/", "hello", "")
            .unwrap()
            .unwrap();
        let text = String::from_utf8(w.request_bytes()).unwrap();
        assert!(text.contains("Content-Type: text/plain; charset=utf-8\r\nContent-Length: 5\r\n"));
        let w = parse("http://127.0.0.1/").unwrap().unwrap();
        let text = String::from_utf8(w.request_bytes()).unwrap();
        assert!(!text.contains("Content-Length"), "{text}");
    }

    #[test]
    fn an_answer_is_complete_by_its_length_or_at_its_bound() {
        let mut r = Reading::default();
        r.push(b"HTTP/1.1 200 OK\r\ncontent-LENGTH: 5\r\nX: y");
        assert!(!r.complete());
        r.push(b"\r\n\r\nhel");
        assert!(!r.complete(), "3 of 5 bytes");
        r.push(b"lo");
        assert!(r.complete());
        assert_eq!(status_of(&r.head), Some(200));
        // No length: only the end of the connection (or the bound) completes it.
        let mut r = Reading::default();
        r.push(b"HTTP/1.0 200 OK\r\n\r\nbody");
        assert!(!r.complete());
        r.push(&vec![0u8; MAX_ANSWER]);
        assert!(r.complete());
        assert!(r.head.len() <= MAX_HEAD);
        // A head longer than the bound is cut there and never completes by length.
        let mut r = Reading::default();
        r.push(b"HTTP/1.1 200 OK\r\n");
        r.push(&vec![b'x'; MAX_HEAD * 2]);
        assert_eq!(r.head.len(), MAX_HEAD);
        assert!(!r.complete());
    }

    #[test]
    fn the_status_is_read_from_the_first_line() {
        assert_eq!(status_of(b"HTTP/1.1 200 OK\r\nX: y\r\n\r\n"), Some(200));
        assert_eq!(
            status_of(b"HTTP/1.0 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(status_of(b"garbage"), None);
        assert_eq!(status_of(b"HTTP/1.1 abc\r\n"), None);
        assert_eq!(status_of(b""), None);
    }

    #[test]
    fn only_the_server_sides_of_the_client_s_port_that_a_process_may_hold_count() {
        // 127.0.0.1:8080 listening; its side of a connection from port 0xC350 (50000) in
        // each state; another client's connection; the client's own side.
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 2 1
   2: 0100007F:1F90 0100007F:C351 01 00000000:00000000 00:00000000 00000000     0        0 3 1
   3: 0100007F:C350 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 4 1
";
        assert_eq!(open_server_sides(table, 50000), 1);
        let closing = table.replace("C350 01", "C350 08");
        assert_eq!(open_server_sides(&closing, 50000), 1);
        let gone = table.replace("C350 01", "C350 06");
        assert_eq!(open_server_sides(&gone, 50000), 0);
        assert_eq!(open_server_sides("", 50000), 0);
    }

    /// Root: the requests are sent from inside another network namespace, to its own
    /// loopback; the process's own (the host's) namespace is refused.
    #[test]
    fn requests_reach_the_container_s_loopback_and_only_it() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        // A thread in a network namespace of its own (loopback up) answers three requests
        // on 127.0.0.1:18080: two 200s, then a 500.
        let (tx, rx) = std::sync::mpsc::channel();
        let server = std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            // The command's process is forked from this thread: it shares its namespace.
            let up = std::process::Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status()
                .unwrap();
            assert!(up.success());
            let l = std::net::TcpListener::bind("127.0.0.1:18080").unwrap();
            tx.send(nix::unistd::gettid().as_raw()).unwrap();
            let mut requests = Vec::new();
            for status in ["200 OK", "200 OK", "500 Oops"] {
                let (mut s, _) = l.accept().unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.ends_with(b"{\"i\":0}") {
                    let k = s.read(&mut buf).unwrap();
                    assert!(k > 0);
                    req.extend_from_slice(&buf[..k]);
                }
                requests.push(String::from_utf8(req).unwrap());
                write!(s, "HTTP/1.1 {status}\r\nContent-Length: 2\r\n\r\nok").unwrap();
                // Keeps the connection open despite `Connection: close` until the client
                // closes its end: the answer is complete by its length.
                assert_eq!(s.read(&mut buf).unwrap(), 0);
            }
            requests
        });
        let tid = rx.recv().unwrap();
        let w = Warmup::parse("POST http://127.0.0.1:18080/fn", "{\"i\":0}", "2")
            .unwrap()
            .unwrap();
        w.send(tid).unwrap();
        let one = Warmup {
            requests: 1,
            ..w.clone()
        };
        assert!(
            matches!(
                one.send(tid),
                Err(WarmupError::Status {
                    n: 1,
                    status: 500,
                    ..
                })
            ),
            "a 500 is a failed warm-up"
        );
        let requests = server.join().unwrap();
        assert_eq!(requests.len(), 3);
        assert!(
            requests[0].starts_with("POST /fn HTTP/1.1\r\n"),
            "{}",
            requests[0]
        );
        // Nothing listens on the port any more: refused.
        assert!(matches!(
            one.send(tid),
            Err(WarmupError::Failed { .. }) | Err(WarmupError::Namespace(_))
        ));
        // The process's own namespace (the host's): refused, nothing sent.
        let own = nix::unistd::getpid().as_raw();
        assert_eq!(w.send(own), Err(WarmupError::HostNetwork));
    }
}
