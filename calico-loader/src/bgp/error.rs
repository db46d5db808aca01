//! What can go wrong computing this node's BGP model or checking its BIRD configuration.

use std::path::PathBuf;

use crate::datastore::resources::PasswordSource;

/// A problem with this node's BGP configuration: each says which resource and field, or which
/// file, it is about.
#[derive(Debug, thiserror::Error)]
pub enum BgpError {
    /// BIRD needs a router id, which is the node's IPv4 address.
    #[error(
        "node {node} has no IPv4 address: BIRD's router id is the node's IPv4 address, so BGP \
         needs one"
    )]
    NoRouterId {
        /// The node.
        node: String,
    },
    /// A password could not be read, or BIRD cannot carry it.
    #[error("{resource}: {field}: cannot use the password from {from}: {message}")]
    Password {
        /// The resource that names the password (`BGPPeer tor`).
        resource: String,
        /// The password's field (`spec.password`).
        field: String,
        /// Where it was to be read.
        from: PasswordSource,
        /// What went wrong.
        message: String,
    },
    /// A selector that the datastore should have refused.
    #[error("{resource}: {field}: invalid selector: {message}")]
    Selector {
        /// The resource (`BGPPeer rr-clients`).
        resource: String,
        /// The selector's field (`spec.peerSelector`).
        field: String,
        /// The parser's message.
        message: String,
    },
    /// `bird` could not be run.
    #[error(
        "cannot run {program} to check the BIRD configuration: {message} (BIRD 2 is Debian's \
         bird2 package)"
    )]
    BirdMissing {
        /// The program looked for.
        program: String,
        /// Why it could not run.
        message: String,
    },
    /// BIRD did not start, or did not answer on its control socket.
    #[error("BIRD did not start: {message}")]
    Start {
        /// Why, with BIRD's last messages.
        message: String,
    },
    /// A `birdc` command failed.
    #[error("birdc {command} failed: {message}")]
    Control {
        /// The command (`configure`).
        command: String,
        /// What birdc printed.
        message: String,
    },
    /// A file of BIRD's run directory could not be written or moved.
    #[error("cannot {what} {}: {message}", path.display())]
    Io {
        /// What was being done (`write`, `rename`...).
        what: String,
        /// The file or directory.
        path: PathBuf,
        /// The system's message.
        message: String,
    },
    /// BIRD refused a configuration.
    #[error("BIRD refused the configuration {}: {message}", path.display())]
    Rejected {
        /// The configuration file.
        path: PathBuf,
        /// BIRD's message (file, line and column, and what is wrong).
        message: String,
    },
}
