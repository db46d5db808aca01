//! Errors found while reading the datastore: each names where the problem is (file, document,
//! line), what it concerns (resource, field) and what is wrong.

use std::fmt;

/// What sort of problem a [`DatastoreError`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    /// The file or directory could not be read.
    Io,
    /// The text is not well-formed YAML (or JSON).
    Syntax,
    /// The document is not a `projectcalico.org/v3` resource this datastore knows: missing or
    /// other `apiVersion`, missing or unknown `kind`.
    Unsupported,
    /// The resource does not follow the schema (unknown or missing field, wrong type) or fails
    /// validation (bad address, name, port...).
    Invalid,
    /// The same resource is defined more than once.
    Duplicate,
}

/// One problem in the datastore's files.
///
/// Displays as `file[:line[:column]]: document N (Kind namespace/name): field: message`, leaving
/// out the parts that are not known, for example
/// `web.yaml:7:13: document 2 (WorkloadEndpoint default/wep1): spec.mac: invalid MAC address "zz:00:00:00:00:01"`.
///
/// Errors order by file, then document, line, column, resource, field, kind and message.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, thiserror::Error)]
pub struct DatastoreError {
    /// The file, as labelled by the caller (for [`super::local::LocalDatastore`], the path
    /// relative to the datastore directory).
    pub file: String,
    /// 1-based index of the YAML document within the file, if the problem is in one.
    pub document: Option<usize>,
    /// 1-based line: of the problem itself when known (the offending value; for a missing
    /// field, the mapping that lacks it), otherwise of the start of the document.
    pub line: Option<usize>,
    /// 1-based column of the problem, when its line is the problem's own.
    pub column: Option<usize>,
    /// The resource concerned, as `Kind namespace/name` or `Kind name`, when known.
    pub resource: Option<String>,
    /// Path of the offending field within the document, like `spec.ipNetworks[1]`.
    pub field: Option<String>,
    /// What sort of problem this is.
    pub kind: ErrorKind,
    /// What is wrong, without the location.
    pub message: String,
}

impl DatastoreError {
    /// A problem with a whole file (or directory).
    pub(super) fn file(
        file: impl Into<String>,
        kind: ErrorKind,
        message: impl Into<String>,
    ) -> Self {
        Self {
            file: file.into(),
            document: None,
            line: None,
            column: None,
            resource: None,
            field: None,
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for DatastoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        f.write_str(": ")?;
        match (self.document, &self.resource) {
            (Some(document), Some(resource)) => write!(f, "document {document} ({resource}): ")?,
            (Some(document), None) => write!(f, "document {document}: ")?,
            (None, Some(resource)) => write!(f, "{resource}: ")?,
            (None, None) => {}
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_has_every_known_part() {
        let mut e = DatastoreError {
            file: "web.yaml".into(),
            document: Some(2),
            line: None,
            column: None,
            resource: Some("WorkloadEndpoint default/wep1".into()),
            field: Some("spec.mac".into()),
            kind: ErrorKind::Invalid,
            message: "invalid MAC address \"zz:00:00:00:00:01\"".into(),
        };
        assert_eq!(
            e.to_string(),
            "web.yaml: document 2 (WorkloadEndpoint default/wep1): spec.mac: invalid MAC address \"zz:00:00:00:00:01\""
        );
        e.line = Some(7);
        e.column = Some(13);
        assert!(e.to_string().starts_with("web.yaml:7:13: document 2 ("));
        let e = DatastoreError::file("a.yaml", ErrorKind::Io, "permission denied");
        assert_eq!(e.to_string(), "a.yaml: permission denied");
    }
}
