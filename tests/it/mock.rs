//! A scripted fake Redis primary, only for faults a real Redis does not produce: garbage on the wire, a
//! connection closed in the middle of a reply. It answers what discovery and probes ask (INFO replication,
//! ROLE) like a primary without replicas, and data commands from a script keyed by the first argument.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What the fake does when a data command's first argument (the key) is `key`.
#[derive(Clone)]
pub enum Script {
    /// Sends these bytes.
    Reply(&'static [u8]),
    /// Sends these bytes, then closes the connection.
    ReplyThenClose(&'static [u8]),
}

/// A running fake primary; stops when dropped.
pub struct MockRedis {
    /// Its address.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl MockRedis {
    /// Starts a fake primary; commands on keys not in `script` get `+OK`.
    pub async fn start(script: Vec<(&'static str, Script)>) -> MockRedis {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind mock");
        let addr = listener.local_addr().expect("mock address");
        let script = Arc::new(script);
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(serve(s, script.clone()));
            }
        });
        MockRedis { addr, task }
    }
}

impl Drop for MockRedis {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut s: TcpStream, script: Arc<Vec<(&'static str, Script)>>) {
    let mut buf = Vec::new();
    let mut scanner = redsplit::resp::RequestScanner::new(redsplit::resp::Limits::default());
    loop {
        let req = match scanner.scan(&buf) {
            Ok(Some(r)) => r,
            Ok(None) => {
                let mut chunk = [0u8; 4096];
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                continue;
            }
            Err(_) => return,
        };
        let arg = |i: usize| {
            scanner
                .arg(&req, &buf, i)
                .map(|a| String::from_utf8_lossy(a).to_ascii_uppercase())
        };
        let (name, first) = (
            arg(0).unwrap_or_default(),
            scanner.arg(&req, &buf, 1).map(|a| a.to_vec()),
        );
        let reply: (Vec<u8>, bool) = match name.as_str() {
            "INFO" => {
                let body = "# Replication\r\nrole:master\r\nconnected_slaves:0\r\nmaster_repl_offset:0\r\n";
                (format!("${}\r\n{body}\r\n", body.len()).into_bytes(), false)
            }
            "ROLE" => (b"*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n".to_vec(), false),
            "COMMAND" => (b"-ERR unknown command\r\n".to_vec(), false),
            _ => {
                let hit = first.and_then(|k| {
                    script
                        .iter()
                        .find(|(key, _)| key.as_bytes() == k.as_slice())
                });
                match hit {
                    Some((_, Script::Reply(b))) => (b.to_vec(), false),
                    Some((_, Script::ReplyThenClose(b))) => (b.to_vec(), true),
                    None => (b"+OK\r\n".to_vec(), false),
                }
            }
        };
        buf.drain(..req.len);
        if s.write_all(&reply.0).await.is_err() || reply.1 {
            return;
        }
    }
}
