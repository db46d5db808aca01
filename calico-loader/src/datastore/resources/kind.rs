//! What a typed kind provides: the [`ResourceKind`] trait, and the document shapes a kind's
//! document deserializes as ([`Document`], [`DocumentWithStatus`]).
//!
//! A typed kind is one file: its Rust type (metadata and spec, with serde's field rules), its
//! [`KindInfo`], and this trait's defaults and validation. The registry (`registry.rs`) names
//! it on one line, and from that line gives it its variant of `Kind` and of `Resource`, its
//! `key()`, and its place in parsing, in the snapshot, in etcd and in the CLI.

use serde::{Deserialize, de::DeserializeOwned};

use super::{fields::FieldError, kind_info::KindInfo, meta::ObjectMeta};

/// A typed `projectcalico.org/v3` kind, implemented by the type its resources parse into.
///
/// Parsing a document of the kind runs, in this order: serde, with the checks on single values
/// (as `Self::Document`); [`from_document`](Self::from_document); the metadata's checks for the
/// kind ([`ObjectMeta::validate`]); [`apply_defaults`](Self::apply_defaults);
/// [`validate`](Self::validate); then the selector parser on every one of
/// [`selector_fields`](Self::selector_fields). A problem found after serde is a
/// [`FieldError`] naming the field's path.
pub trait ResourceKind: Sized {
    /// The kind's facts: name, plural, short names, scope, etcd keys.
    const INFO: KindInfo;

    /// The whole document as it deserializes: [`Document`] or [`DocumentWithStatus`] of the
    /// kind's spec (an `Option` when Calico lets the spec be left out).
    type Document: DeserializeOwned;

    /// The resource a deserialized document holds, before defaults and checks.
    fn from_document(document: Self::Document) -> Self;

    /// Its metadata.
    fn metadata(&self) -> &ObjectMeta;

    /// Its metadata, for the namespace default.
    fn metadata_mut(&mut self) -> &mut ObjectMeta;

    /// Fills in what Calico defaults. Runs before [`validate`](Self::validate).
    fn apply_defaults(&mut self) {}

    /// The checks across fields that deserializing cannot make.
    fn validate(&self) -> Vec<FieldError> {
        Vec::new()
    }

    /// Every selector-valued field with its path within the resource (like
    /// `spec.ingress[0].source.selector`), for the parser to check with the selector language.
    fn selector_fields(&self) -> Vec<(String, &str)> {
        Vec::new()
    }

    /// The resource of `document` with Calico's defaults applied, and every problem the checks
    /// after serde find: the metadata's, then the kind's own.
    fn build(document: Self::Document) -> (Self, Vec<FieldError>) {
        let mut resource = Self::from_document(document);
        let mut problems = resource.metadata_mut().validate(&Self::INFO);
        resource.apply_defaults();
        problems.extend(resource.validate());
        (resource, problems)
    }
}

/// The [`ResourceKind`] methods every kind's type writes alike, for a type whose fields are
/// `metadata`, `spec` and, when `status` is named, `status`: `from_document`, `metadata` and
/// `metadata_mut`. `spec` takes the document's spec as it is; `optional spec` takes the spec's
/// default when the document leaves it out (`Document<Option<Spec>>`).
macro_rules! document_parts {
    (spec $(, $status:ident)?) => {
        $crate::datastore::resources::kind::document_parts!(@methods [] $(, $status)?);
    };
    (optional spec $(, $status:ident)?) => {
        $crate::datastore::resources::kind::document_parts!(
            @methods [.unwrap_or_default()] $(, $status)?
        );
    };
    (@methods [$($spec:tt)*] $(, $status:ident)?) => {
        fn from_document(document: Self::Document) -> Self {
            Self {
                metadata: document.metadata,
                spec: document.spec $($spec)*,
                $($status: document.$status,)?
            }
        }

        fn metadata(&self) -> &ObjectMeta {
            &self.metadata
        }

        fn metadata_mut(&mut self) -> &mut ObjectMeta {
            &mut self.metadata
        }
    };
}
pub(crate) use document_parts;

/// A whole document without status: `apiVersion` and `kind` (already checked by the parser),
/// `metadata` and `spec`. With `S` an `Option`, the spec may be left out or `null`, as Go
/// allows.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Document<S> {
    #[serde(rename = "apiVersion")]
    _api_version: String,
    #[serde(rename = "kind")]
    _kind: String,
    /// The resource's metadata.
    pub metadata: ObjectMeta,
    /// Its spec.
    pub spec: S,
}

/// A whole document that may carry a `status`, as the API server reports it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DocumentWithStatus<S, T> {
    #[serde(rename = "apiVersion")]
    _api_version: String,
    #[serde(rename = "kind")]
    _kind: String,
    /// The resource's metadata.
    pub metadata: ObjectMeta,
    /// Its spec.
    pub spec: S,
    /// Its status, if the document has one.
    #[serde(default)]
    pub status: Option<T>,
}
