//! How the agent and the CLI reach etcd: the settings ([`EtcdConfig`], as calicoctl's
//! `ETCD_*` variables), and a client over all the endpoints ([`EtcdClient`]) that talks to one
//! member at a time and moves on to the next when that one cannot be reached.
//!
//! etcd-client balances requests over all endpoints, but a dead member stays in its balance
//! set: with one member of three down, about one request in three failed with "connection
//! refused" (the CLI failed, and the agent's list or watch could fail again and again). Here
//! each endpoint has its own client, and:
//!
//! - a read (a get, a list) that finds its member unreachable is sent to the next one, until
//!   each was tried once;
//! - a transaction is sent to the next member only when the connection to the first was
//!   refused (the request never reached etcd); when a member fails while a transaction is in
//!   flight, whether it was applied is unknown, and the error goes back to the caller;
//! - a watch runs on the current member; when it breaks the follower moves on
//!   ([`EtcdClient::fail_over`]) and resumes from the last revision it saw.
//!
//! A member that comes back is used again when the others fail in turn. As with calicoctl,
//! the members need not be listed all: one reachable member of a healthy cluster serves
//! everything.

use std::{path::PathBuf, time::Duration};

use etcd_client::{Client, ConnectOptions, GetOptions, GetResponse, Txn, TxnResponse};
use tracing::debug;

use super::store::{StoreError, describe_error};

/// Timeout of one etcd request (a list, a transaction); a watch is not limited.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout of connecting to an endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How to reach etcd: as calicoctl's `ETCD_ENDPOINTS`, `ETCD_CA_CERT_FILE`, `ETCD_CERT_FILE`,
/// `ETCD_KEY_FILE`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `http://host:port` or `https://host:port` URLs.
    pub endpoints: Vec<String>,
    /// CA certificate (PEM) to check the servers' certificates with.
    pub ca_cert_file: Option<PathBuf>,
    /// Client certificate (PEM), with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// Client key (PEM), with `cert_file`.
    pub key_file: Option<PathBuf>,
}

impl EtcdConfig {
    /// The endpoints, comma-separated, for messages.
    pub fn endpoints_label(&self) -> String {
        self.endpoints.join(",")
    }

    /// A failure of etcd under these settings, as a [`StoreError::Etcd`].
    pub fn error(&self, error: etcd_client::Error) -> StoreError {
        StoreError::Etcd {
            endpoints: self.endpoints_label(),
            hint: self.hint(&error),
            error,
        }
    }

    /// What to check, for TLS failures whose own message leaves the cause unsaid.
    pub fn hint(&self, error: &etcd_client::Error) -> Option<&'static str> {
        let text = describe_error(error);
        if text.contains("UnknownIssuer") {
            return Some(if self.ca_cert_file.is_some() {
                "etcd's certificate is not signed by the CA in ETCD_CA_CERT_FILE"
            } else {
                "etcd's certificate is not trusted: set ETCD_CA_CERT_FILE to the CA that signed it"
            });
        }
        // With TLS 1.3 the client's handshake is done before etcd checks its certificate, so
        // a refused (or missing) client certificate shows up as a closed connection: closed,
        // reset, or a broken pipe when the request was being written as etcd closed it.
        let https = self.endpoints.iter().any(|e| e.starts_with("https://"));
        let closed = [
            "connection closed",
            "broken pipe",
            "Connection reset",
            "CertificateRequired",
            "BadCertificate",
        ];
        if https && closed.iter().any(|c| text.contains(c)) {
            return Some(if self.cert_file.is_some() {
                "etcd closed the TLS connection: check that ETCD_CERT_FILE is signed by a CA etcd \
                 trusts (--trusted-ca-file) and is meant for clients"
            } else {
                "etcd closed the TLS connection: if it requires client certificates \
                 (--client-cert-auth), set ETCD_CERT_FILE and ETCD_KEY_FILE"
            });
        }
        None
    }

    /// A client for these endpoints ([`EtcdClient`]). Connects lazily: an unreachable etcd
    /// shows up at the first request.
    ///
    /// # Errors
    ///
    /// [`StoreError::Config`] for no endpoints, a certificate or key that cannot be read, a
    /// certificate without its key (or the reverse), or TLS files with `http://` endpoints.
    pub async fn connect(&self) -> Result<EtcdClient, StoreError> {
        if self.endpoints.is_empty() {
            return Err(StoreError::Config(
                "no etcd endpoints: set ETCD_ENDPOINTS (or --etcd-endpoints), like http://127.0.0.1:2379".into(),
            ));
        }
        let mut options = ConnectOptions::new()
            .with_timeout(REQUEST_TIMEOUT)
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3));
        let read = |what: &str, path: &PathBuf| {
            std::fs::read(path).map_err(|e| {
                StoreError::Config(format!("{what} {}: cannot read: {e}", path.display()))
            })
        };
        let tls_wanted =
            self.ca_cert_file.is_some() || self.cert_file.is_some() || self.key_file.is_some();
        if tls_wanted {
            let mut tls = etcd_client::TlsOptions::new();
            if let Some(ca) = &self.ca_cert_file {
                tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(
                    "ETCD_CA_CERT_FILE",
                    ca,
                )?));
            }
            match (&self.cert_file, &self.key_file) {
                (Some(cert), Some(key)) => {
                    tls = tls.identity(etcd_client::Identity::from_pem(
                        read("ETCD_CERT_FILE", cert)?,
                        read("ETCD_KEY_FILE", key)?,
                    ));
                }
                (None, None) => {}
                _ => {
                    return Err(StoreError::Config(
                        "ETCD_CERT_FILE and ETCD_KEY_FILE go together: set both or neither".into(),
                    ));
                }
            }
            if let Some(plain) = self.endpoints.iter().find(|e| e.starts_with("http://")) {
                return Err(StoreError::Config(format!(
                    "etcd endpoint {plain}: TLS files are set, so endpoints must be https://"
                )));
            }
            options = options.with_tls(tls);
        }
        let mut clients = Vec::new();
        for endpoint in &self.endpoints {
            let client = Client::connect([endpoint.as_str()], Some(options.clone()))
                .await
                .map_err(|error| self.error(error))?;
            clients.push((endpoint.clone(), client));
        }
        Ok(EtcdClient {
            clients,
            current: 0,
        })
    }
}

/// A client of one etcd cluster through the endpoints of an [`EtcdConfig`], one member at a
/// time (see the module's documentation).
#[derive(Clone)]
pub struct EtcdClient {
    /// Each endpoint with its own client (cheap to clone: a shared channel).
    clients: Vec<(String, Client)>,
    /// The member requests go to first.
    current: usize,
}

impl std::fmt::Debug for EtcdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdClient")
            .field("endpoint", &self.endpoint())
            .finish_non_exhaustive()
    }
}

impl EtcdClient {
    /// The endpoint requests go to now.
    pub fn endpoint(&self) -> &str {
        self.clients
            .get(self.current)
            .map_or("", |(endpoint, _)| endpoint.as_str())
    }

    /// The client of the current member, for a watch.
    pub fn current(&mut self) -> &mut Client {
        let at = self.current;
        &mut self.clients[at].1
    }

    /// Moves on to the next member (after the last, the first again); its endpoint.
    pub fn fail_over(&mut self) -> &str {
        self.current = (self.current + 1) % self.clients.len().max(1);
        self.endpoint()
    }

    /// A get (of one key, a prefix or a range), from the current member or, when that one
    /// cannot be reached, the next ones.
    ///
    /// # Errors
    ///
    /// The last member's error when none could answer, or etcd's answer.
    pub async fn get(
        &mut self,
        key: impl Into<Vec<u8>>,
        options: Option<GetOptions>,
    ) -> Result<GetResponse, etcd_client::Error> {
        let key: Vec<u8> = key.into();
        self.with_failover(Retry::Unreachable, |mut client| {
            let (key, options) = (key.clone(), options.clone());
            async move { client.get(key, options).await }
        })
        .await
    }

    /// A transaction, on the current member or, when the connection to it is refused (the
    /// request never left), the next ones.
    ///
    /// # Errors
    ///
    /// As [`Self::get`]; a member that failed with the transaction in flight is not retried.
    pub async fn txn(&mut self, txn: Txn) -> Result<TxnResponse, etcd_client::Error> {
        self.with_failover(Retry::NotSent, |mut client| {
            let txn = txn.clone();
            async move { client.txn(txn).await }
        })
        .await
    }

    /// Runs `request` on the current member, then on the next ones while its error allows a
    /// retry, each member once.
    async fn with_failover<T, F, Fut>(
        &mut self,
        retry: Retry,
        mut request: F,
    ) -> Result<T, etcd_client::Error>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut tries = self.clients.len();
        loop {
            let client = self.current().clone();
            match request(client).await {
                Ok(value) => return Ok(value),
                Err(error) if tries > 1 && retry.allows(&error) => {
                    tries -= 1;
                    let failed = self.endpoint().to_owned();
                    let next = self.fail_over().to_owned();
                    debug!(
                        failed = %failed,
                        next = %next,
                        "etcd member unreachable ({}); trying the next one",
                        describe_error(&error)
                    );
                }
                Err(error) => {
                    // The caller reports the failure; the next request starts with another
                    // member.
                    if retry.allows(&error) {
                        self.fail_over();
                    }
                    return Err(error);
                }
            }
        }
    }
}

/// Which failures a request may be sent again to another member after.
#[derive(Clone, Copy)]
enum Retry {
    /// The member could not be reached or did not answer (reads).
    Unreachable,
    /// The request never reached the member (writes).
    NotSent,
}

impl Retry {
    fn allows(self, error: &etcd_client::Error) -> bool {
        match self {
            Self::Unreachable => unreachable(error),
            Self::NotSent => not_sent(error),
        }
    }
}

/// Whether `error` says the member could not be reached or did not answer, rather than
/// answering with an error of its own (a status etcd sent carries no transport cause).
pub fn unreachable(error: &etcd_client::Error) -> bool {
    use std::error::Error as _;
    match error {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(status) => match i32::from(status.code()) {
            grpc_code::CANCELLED | grpc_code::DEADLINE_EXCEEDED | grpc_code::UNAVAILABLE => true,
            grpc_code::UNKNOWN => status.source().is_some(),
            _ => false,
        },
        _ => false,
    }
}

/// The gRPC status codes that say a request got no answer (gRPC's `statuscodes.md`).
mod grpc_code {
    pub const CANCELLED: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const UNAVAILABLE: i32 = 14;
}

/// Whether `error` says the connection to the member was refused, so the request never
/// reached it.
pub fn not_sent(error: &etcd_client::Error) -> bool {
    use std::error::Error as _;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = match error {
        etcd_client::Error::GRpcStatus(status) => status.source(),
        etcd_client::Error::TransportError(e) => e.source(),
        etcd_client::Error::IoError(e) => Some(e),
        _ => None,
    };
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        cause = c.source();
    }
    false
}
