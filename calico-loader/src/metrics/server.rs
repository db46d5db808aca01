//! The HTTP endpoints: `GET /metrics` (Prometheus text format) and `GET /liveness`,
//! `GET /readiness` (200 when healthy, 503 when not, as Felix answers). A small HTTP/1.x
//! handler: one request per connection, answered and closed.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use tracing::debug;

use super::{Health, Metrics};

/// The Prometheus text format's content type.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The longest request head read.
const MAX_REQUEST: usize = 8192;

/// How long a client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What one listener serves.
#[derive(Clone)]
pub struct Routes {
    pub metrics: Option<Metrics>,
    pub health: Option<Health>,
}

/// Binds `address`.
///
/// # Errors
///
/// The address cannot be bound.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

/// Serves `routes` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, routes: Routes) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let routes = routes.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, &routes).await {
                        debug!(%peer, "HTTP request not answered: {e}");
                    }
                });
            }
            Err(e) => {
                debug!("accepting an HTTP connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(mut stream: TcpStream, routes: &Routes) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(REQUEST_TIMEOUT, read)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request timed out"))??;
    let request_line = head
        .split(|b| *b == b'\n')
        .next()
        .map(|l| String::from_utf8_lossy(l).trim().to_owned())
        .unwrap_or_default();
    let (status, content_type, body) = respond(&request_line, routes);
    let head_only = request_line.starts_with("HEAD ");
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        response.extend_from_slice(body.as_bytes());
    }
    stream.write_all(&response).await?;
    stream.shutdown().await
}

/// The status line's code and reason, content type and body for `request_line`.
fn respond(request_line: &str, routes: &Routes) -> (&'static str, &'static str, String) {
    const PLAIN: &str = "text/plain; charset=utf-8";
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" && method != "HEAD" {
        return ("405 Method Not Allowed", PLAIN, "only GET\n".to_owned());
    }
    let path = target.split('?').next().unwrap_or("");
    match (path, &routes.metrics, &routes.health) {
        ("/metrics", Some(metrics), _) => match metrics.encode() {
            Ok(text) => ("200 OK", TEXT_FORMAT, text),
            Err(e) => (
                "500 Internal Server Error",
                PLAIN,
                format!("encoding the metrics: {e}\n"),
            ),
        },
        ("/liveness" | "/readiness", _, Some(health)) => {
            let status = health.status();
            let healthy = if path == "/liveness" {
                status.iter().all(|c| c.live)
            } else {
                status.iter().all(|c| c.ready)
            };
            let body: String = status
                .iter()
                .map(|c| {
                    format!(
                        "{}: live={} ready={}{}\n",
                        c.name,
                        c.live,
                        c.ready,
                        if c.timed_out {
                            " (no report within its deadline)"
                        } else {
                            ""
                        }
                    )
                })
                .collect();
            let code = if healthy {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            (code, PLAIN, body)
        }
        _ => ("404 Not Found", PLAIN, "not found\n".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_answers_503_until_ready() {
        let health = Health::default();
        health.register("loop", Duration::from_secs(60));
        let routes = Routes {
            metrics: None,
            health: Some(health.clone()),
        };
        assert_eq!(
            respond("GET /readiness HTTP/1.1", &routes).0,
            "503 Service Unavailable"
        );
        health.report("loop", true, false);
        assert_eq!(respond("GET /liveness HTTP/1.1", &routes).0, "200 OK");
        assert_eq!(
            respond("GET /readiness HTTP/1.1", &routes).0,
            "503 Service Unavailable"
        );
        health.report("loop", true, true);
        assert_eq!(respond("GET /readiness HTTP/1.1", &routes).0, "200 OK");
        assert_eq!(respond("GET /metrics HTTP/1.1", &routes).0, "404 Not Found");
        assert_eq!(
            respond("POST /readiness HTTP/1.1", &routes).0,
            "405 Method Not Allowed"
        );
    }
}
