//! From a file's text to resources: splitting into YAML documents, flattening lists, checking
//! `apiVersion` and `kind`, deserializing and validating, and reporting every problem with its
//! file, document, line, resource and field.

use std::collections::BTreeMap;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IgnoredAny};
use serde_yaml::Value;

use super::{
    error::{DatastoreError, ErrorKind},
    resources::{
        API_VERSION, DEFAULT_NAMESPACE, FieldError, Kind, KindVisitor, Registered, Resource,
        UntypedDocument, UntypedResource,
    },
    selector::Selector,
};

/// Parses the text of one file: any number of YAML (or JSON) documents separated by `---`, each
/// a `projectcalico.org/v3` resource, a `List`/`<Kind>List` with `items`, or a sequence of
/// resources. Empty documents are skipped.
///
/// `file_label` names the file in errors.
///
/// # Errors
///
/// If any document is invalid the whole file is rejected, with every problem found.
pub fn parse_file(file_label: &str, text: &str) -> Result<Vec<Resource>, Vec<DatastoreError>> {
    parse_file_located(file_label, text)
        .map(|parsed| parsed.into_iter().map(|p| p.resource).collect())
}

/// A resource parsed from a file, with the document (or list item) it came from as JSON, for
/// writers that store what the user wrote (the CLI).
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedDocument {
    /// The validated resource (Calico's defaults applied).
    pub resource: Resource,
    /// The object as written, as JSON; for an item of a `<Kind>List`, with `apiVersion` and
    /// `kind` filled in.
    pub raw: serde_json::Value,
}

/// [`parse_file`], also giving each resource's object as written. Validation is exactly
/// `parse_file`'s.
///
/// # Errors
///
/// Every problem in the text, as for [`parse_file`].
pub fn parse_documents(
    file_label: &str,
    text: &str,
) -> Result<Vec<ParsedDocument>, Vec<DatastoreError>> {
    let resources = parse_file(file_label, text)?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut raws = Vec::new();
    for (index, chunk) in split_documents(text).into_iter().enumerate() {
        let invalid = |message: String| {
            vec![DatastoreError {
                file: file_label.to_owned(),
                document: Some(index + 1),
                line: Some(chunk.first_line),
                column: None,
                resource: None,
                field: None,
                kind: ErrorKind::Syntax,
                message,
            }]
        };
        let mut value: Value =
            serde_yaml::from_str(chunk.text).map_err(|e| invalid(e.to_string()))?;
        value.apply_merge().map_err(|e| invalid(e.to_string()))?;
        let objects = match value {
            Value::Null => Vec::new(),
            Value::Sequence(items) => items,
            value => {
                let kind = value
                    .get("kind")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                match kind.strip_suffix("List") {
                    Some(item_kind)
                        if item_kind.is_empty() || Kind::from_name(item_kind).is_some() =>
                    {
                        let items = match value.get("items") {
                            Some(Value::Sequence(items)) => items.clone(),
                            _ => Vec::new(),
                        };
                        items
                            .into_iter()
                            .map(|mut item| {
                                if let (Some(kind), Value::Mapping(map)) =
                                    (Kind::from_name(item_kind), &mut item)
                                {
                                    map.entry("kind".into())
                                        .or_insert_with(|| kind.as_str().into());
                                    map.entry("apiVersion".into())
                                        .or_insert_with(|| API_VERSION.into());
                                }
                                item
                            })
                            .collect()
                    }
                    _ => vec![value],
                }
            }
        };
        for object in objects {
            raws.push(
                serde_json::to_value(&object)
                    .map_err(|e| invalid(format!("cannot be represented as JSON: {e}")))?,
            );
        }
    }
    if raws.len() != resources.len() {
        return Err(vec![DatastoreError::file(
            file_label,
            ErrorKind::Unsupported,
            format!(
                "found {} resources but {} objects",
                resources.len(),
                raws.len()
            ),
        )]);
    }
    Ok(resources
        .into_iter()
        .zip(raws)
        .map(|(resource, raw)| ParsedDocument { resource, raw })
        .collect())
}

/// A resource with where it was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Located {
    /// 1-based document index within the file.
    pub document: usize,
    /// 1-based line where the document starts.
    pub line: usize,
    /// The resource.
    pub resource: Resource,
}

/// [`parse_file`], keeping where each resource was found.
pub(super) fn parse_file_located(
    file_label: &str,
    text: &str,
) -> Result<Vec<Located>, Vec<DatastoreError>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut parsed = Vec::new();
    let mut errors = Vec::new();
    for (index, chunk) in split_documents(text).into_iter().enumerate() {
        let doc = Doc {
            file: file_label,
            document: index + 1,
            chunk,
        };
        match doc.parse() {
            Ok(resources) => parsed.extend(resources.into_iter().map(|resource| Located {
                document: doc.document,
                line: chunk.first_line,
                resource,
            })),
            Err(e) => errors.extend(e),
        }
    }

    // The same resource twice in one file is a mistake in that file.
    let mut seen = BTreeMap::new();
    for located in &parsed {
        let key = located.resource.key();
        if let Some(first) = seen.get(&key) {
            errors.push(DatastoreError {
                file: file_label.to_owned(),
                document: Some(located.document),
                line: Some(located.line),
                column: None,
                resource: Some(key.to_string()),
                field: None,
                kind: ErrorKind::Duplicate,
                message: format!("defined again (first in document {first} of this file)"),
            });
        } else {
            seen.insert(key, located.document);
        }
    }

    if errors.is_empty() {
        Ok(parsed)
    } else {
        Err(errors)
    }
}

/// One YAML document's text within its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Chunk<'a> {
    pub text: &'a str,
    /// 1-based line of the file where `text` starts.
    pub first_line: usize,
}

/// Splits a YAML stream into its documents, keeping where each starts, so that errors can name
/// lines of the file. A line starting `---` starts a document, one starting `...` ends it (YAML
/// forbids both at the start of a line inside a document); comments and directives before a
/// document's `---` belong to it. Chunks holding only blank lines and comments are dropped.
pub(super) fn split_documents(text: &str) -> Vec<Chunk<'_>> {
    fn is_marker(line: &str, marker: &str) -> bool {
        line.strip_prefix(marker)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
    }

    let mut chunks = Vec::new();
    let mut start = 0; // byte offset where the current chunk starts
    let mut start_line = 1;
    let mut started = false; // the current chunk has a document (a `---` or content)
    let mut offset = 0;
    for (i, raw) in yaml_lines(text).enumerate() {
        let line = raw.trim_end_matches(['\n', '\r']);
        let line_no = i + 1;
        if is_marker(line, "---") {
            if started {
                chunks.push(Chunk {
                    text: &text[start..offset],
                    first_line: start_line,
                });
                start = offset;
                start_line = line_no;
            }
            started = true;
        } else if is_marker(line, "...") {
            if started {
                chunks.push(Chunk {
                    text: &text[start..offset + raw.len()],
                    first_line: start_line,
                });
            }
            start = offset + raw.len();
            start_line = line_no + 1;
            started = false;
        } else {
            let trimmed = line.trim_start();
            let directive = !started && line.starts_with('%');
            if !trimmed.is_empty() && !trimmed.starts_with('#') && !directive {
                started = true;
            }
        }
        offset += raw.len();
    }
    if started {
        chunks.push(Chunk {
            text: &text[start..],
            first_line: start_line,
        });
    }
    chunks
}

/// The lines of `text` as YAML counts them, each with its line break: a line ends at LF, at
/// CR LF, or at a CR alone. Error lines then agree with YAML's (and an editor's).
fn yaml_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = match rest.find(['\n', '\r']) {
            None => rest.len(),
            Some(at) if rest[at..].starts_with("\r\n") => at + 2,
            Some(at) => at + 1,
        };
        let (line, tail) = rest.split_at(end);
        rest = tail;
        Some(line)
    })
}

/// The document being parsed: where it is, for errors.
struct Doc<'a> {
    file: &'a str,
    document: usize,
    chunk: Chunk<'a>,
}

/// Where, within a document, an object being parsed is: the document itself, or an item of a
/// list in it.
struct Place {
    /// Field path of the object within the document (`""` for the document, `items[2]`...).
    path: String,
    /// Whether the object is the whole document: then serde's errors can be located by line,
    /// by deserializing the document's text.
    whole_document: bool,
}

impl Place {
    fn field(&self, field: &str) -> Option<String> {
        match (self.path.is_empty(), field.is_empty()) {
            (true, true) => None,
            (true, false) => Some(field.to_owned()),
            (false, true) => Some(self.path.clone()),
            (false, false) if field.starts_with('[') => Some(format!("{}{field}", self.path)),
            (false, false) => Some(format!("{}.{field}", self.path)),
        }
    }
}

impl Doc<'_> {
    fn error(
        &self,
        kind: ErrorKind,
        resource: Option<String>,
        field: Option<String>,
        message: impl Into<String>,
    ) -> DatastoreError {
        DatastoreError {
            file: self.file.to_owned(),
            document: Some(self.document),
            line: Some(self.chunk.first_line),
            column: None,
            resource,
            field,
            kind,
            message: message.into(),
        }
    }

    /// The document's text with blank lines in front, so that serde_yaml's line numbers are
    /// the file's. Only used once something failed, to locate it.
    fn padded_text(&self) -> String {
        let mut padded = "\n".repeat(self.chunk.first_line.saturating_sub(1));
        padded.push_str(self.chunk.text);
        padded
    }

    fn parse(&self) -> Result<Vec<Resource>, Vec<DatastoreError>> {
        let mut value: Value = match serde_yaml::from_str(self.chunk.text) {
            Ok(value) => value,
            Err(_) => return Err(vec![self.syntax_error()]),
        };
        if let Err(e) = value.apply_merge() {
            return Err(vec![self.error(
                ErrorKind::Syntax,
                None,
                None,
                e.to_string(),
            )]);
        }
        match value {
            Value::Null => Ok(Vec::new()),
            Value::Sequence(items) => self.parse_items(&items, "", None),
            value => self.parse_object(
                value,
                &Place {
                    path: String::new(),
                    whole_document: true,
                },
                None,
            ),
        }
    }

    fn syntax_error(&self) -> DatastoreError {
        let padded = self.padded_text();
        let Err(e) = serde_yaml::from_str::<Value>(&padded) else {
            return self.error(ErrorKind::Syntax, None, None, "invalid YAML");
        };
        let mut error = self.error(ErrorKind::Syntax, None, None, e.to_string());
        if let Some(location) = e.location() {
            let suffix = format!(" at line {} column {}", location.line(), location.column());
            error.message = error.message.replacen(&suffix, "", 1);
            error.line = Some(location.line());
            error.column = Some(location.column());
        }
        error
    }

    /// Items of a list (or of a top-level sequence); `list_kind` is the kind a `<Kind>List`
    /// gives its items.
    fn parse_items(
        &self,
        items: &[Value],
        path: &str,
        list_kind: Option<Kind>,
    ) -> Result<Vec<Resource>, Vec<DatastoreError>> {
        let mut resources = Vec::new();
        let mut errors = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let place = Place {
                path: format!("{path}[{i}]"),
                whole_document: false,
            };
            match self.parse_object(item.clone(), &place, list_kind) {
                Ok(r) => resources.extend(r),
                Err(e) => errors.extend(e),
            }
        }
        if errors.is_empty() {
            Ok(resources)
        } else {
            Err(errors)
        }
    }

    /// One object: a resource, or a list of them. `list_kind` is set for the items of a
    /// `<Kind>List`, which may leave out `apiVersion` and `kind`.
    fn parse_object(
        &self,
        mut value: Value,
        place: &Place,
        list_kind: Option<Kind>,
    ) -> Result<Vec<Resource>, Vec<DatastoreError>> {
        let Value::Mapping(map) = &mut value else {
            return Err(vec![self.error(
                ErrorKind::Unsupported,
                None,
                place.field(""),
                "expected a resource (a mapping with apiVersion and kind)",
            )]);
        };
        if let Some(kind) = list_kind {
            map.entry("kind".into())
                .or_insert_with(|| kind.as_str().into());
            map.entry("apiVersion".into())
                .or_insert_with(|| API_VERSION.into());
        }
        let label = resource_label(&value);
        let unsupported = |field: &str, message: String| {
            Err(vec![self.error(
                ErrorKind::Unsupported,
                label.clone(),
                place.field(field),
                message,
            )])
        };

        let kind_name = match value.get("kind") {
            Some(Value::String(kind)) if !kind.is_empty() => kind.clone(),
            Some(Value::String(_) | Value::Null) | None => {
                return unsupported(
                    "kind",
                    "missing: every document needs apiVersion and kind".into(),
                );
            }
            Some(_) => return unsupported("kind", "must be a string".into()),
        };
        let api_version = match value.get("apiVersion") {
            Some(Value::String(v)) if !v.is_empty() => v.clone(),
            Some(Value::String(_) | Value::Null) | None => {
                return unsupported("apiVersion", format!("missing (expected {API_VERSION})"));
            }
            Some(_) => return unsupported("apiVersion", "must be a string".into()),
        };

        // Lists: `kind: List` (apiVersion v1, as kubectl writes it, or ours) and `<Kind>List`.
        let list_of = kind_name
            .strip_suffix("List")
            .map(|k| (k.is_empty(), Kind::from_name(k)));
        if let Some((generic, item_kind)) = list_of
            && (generic || item_kind.is_some())
        {
            if list_kind.is_some() || !place.path.is_empty() {
                return unsupported("kind", format!("a {kind_name} cannot be nested in a list"));
            }
            if api_version != API_VERSION && !(generic && api_version == "v1") {
                return unsupported(
                    "apiVersion",
                    format!(
                        "unsupported {api_version:?} for a {kind_name} (expected {API_VERSION})"
                    ),
                );
            }
            let list: ListDocument = self.deserialize(value, place, None)?;
            return self.parse_items(&list.items, "items", item_kind);
        }

        if api_version != API_VERSION {
            return unsupported(
                "apiVersion",
                format!("unsupported {api_version:?} (expected {API_VERSION})"),
            );
        }
        let Some(kind) = Kind::from_name(&kind_name) else {
            return unsupported(
                "kind",
                format!("unknown {kind_name:?} (not a {API_VERSION} kind this datastore knows)"),
            );
        };
        if let Some(list_kind) = list_kind
            && kind != list_kind
        {
            return unsupported("kind", format!("a {list_kind}List cannot hold a {kind}"));
        }
        self.parse_resource(kind, value, place).map(|r| vec![r])
    }

    /// A resource of a recognised kind: deserialize, then default and validate as its kind
    /// says (see the registry), then parse its selectors.
    fn parse_resource(
        &self,
        kind: Kind,
        value: Value,
        place: &Place,
    ) -> Result<Resource, Vec<DatastoreError>> {
        let label = resource_label(&value);
        let (resource, mut problems) = kind.visit(Build {
            doc: self,
            value,
            place,
            label,
        })?;
        problems.extend(selector_problems(&resource));
        if problems.is_empty() {
            return Ok(resource);
        }
        let label = Some(resource.key().to_string());
        Err(problems
            .into_iter()
            .map(|p| {
                let field = place.field(&p.field);
                let mut error = self.error(ErrorKind::Invalid, label.clone(), field, p.message);
                self.locate(&mut error);
                error
            })
            .collect())
    }

    /// Deserializes `value` as a `T`, reporting serde's error with its field path and, when the
    /// object is a whole document, its line and column.
    fn deserialize<T: DeserializeOwned>(
        &self,
        value: Value,
        place: &Place,
        label: Option<String>,
    ) -> Result<T, Vec<DatastoreError>> {
        let e = match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        let message = e.into_inner().to_string();
        let mut error = self.error(ErrorKind::Invalid, label, place.field(&field), message);
        if place.whole_document {
            // The same error, from the text: serde_yaml then knows where it is.
            if let Err(located) = serde_yaml::from_str::<T>(&self.padded_text())
                && located.to_string().contains(&error.message)
                && let Some(location) = located.location()
            {
                error.line = Some(location.line());
                error.column = Some(location.column());
            }
        }
        if error.column.is_none() {
            self.locate(&mut error);
        }
        Err(vec![error])
    }

    /// Places `error` at its field in the document's text: the field's value, or, if the
    /// document has no such field, the innermost mapping or sequence on the way to it. Leaves
    /// the error at the start of the document if its field cannot be found at all.
    fn locate(&self, error: &mut DatastoreError) {
        let Some(field) = &error.field else { return };
        let padded = self.padded_text();
        let deserializer = serde_yaml::Deserializer::from_str(&padded);
        if let Err(e) = (Locate { rest: field }).deserialize(deserializer)
            && let Some(location) = e.location()
        {
            error.line = Some(location.line());
            error.column = Some(location.column());
        }
    }
}

/// `Kind namespace/name` or `Kind name`, from an object that may not deserialize, for errors.
fn resource_label(value: &Value) -> Option<String> {
    let kind_name = value.get("kind").and_then(Value::as_str)?;
    let metadata = value.get("metadata");
    let name = metadata
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .unwrap_or("<unnamed>");
    let namespace = metadata
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty());
    Some(match Kind::from_name(kind_name) {
        Some(kind) if kind.is_namespaced() => format!(
            "{kind_name} {}/{name}",
            namespace.unwrap_or(DEFAULT_NAMESPACE)
        ),
        _ => match namespace {
            Some(namespace) => format!("{kind_name} {namespace}/{name}"),
            None => format!("{kind_name} {name}"),
        },
    })
}

/// Deserializes one resource as the type its kind gives, and builds it (defaults, checks).
struct Build<'a> {
    doc: &'a Doc<'a>,
    value: Value,
    place: &'a Place,
    label: Option<String>,
}

impl KindVisitor for Build<'_> {
    type Output = Result<(Resource, Vec<FieldError>), Vec<DatastoreError>>;

    fn typed<K: Registered>(self) -> Self::Output {
        let document = self.doc.deserialize(self.value, self.place, self.label)?;
        let (resource, problems) = K::build(document);
        Ok((resource.into_resource(), problems))
    }

    fn untyped(self, kind: Kind, wrap: fn(UntypedResource) -> Resource) -> Self::Output {
        let document: UntypedDocument = self.doc.deserialize(self.value, self.place, self.label)?;
        Ok(UntypedResource::build(kind, document, wrap))
    }
}

/// A `List` or `<Kind>List` document.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ListDocument {
    #[serde(rename = "apiVersion")]
    _api_version: String,
    #[serde(rename = "kind")]
    _kind: String,
    #[serde(default, rename = "metadata")]
    _metadata: Option<ListMeta>,
    #[serde(default, deserialize_with = "nullable_items")]
    items: Vec<Value>,
}

fn nullable_items<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<Value>, D::Error> {
    use serde::Deserialize as _;
    Ok(Option::<Vec<Value>>::deserialize(deserializer)?.unwrap_or_default())
}

/// Kubernetes list metadata: accepted, unused.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ListMeta {
    #[serde(default, rename = "resourceVersion")]
    _resource_version: Option<String>,
    #[serde(default, rename = "continue")]
    _continue: Option<String>,
    #[serde(default, rename = "selfLink")]
    _self_link: Option<String>,
    #[serde(default, rename = "remainingItemCount")]
    _remaining_item_count: Option<i64>,
}

/// Walks a YAML document to the field at `rest` (a path like `items[1].spec.ingress[0].action`)
/// and fails there, so that serde_yaml's error carries the field's line and column. Every
/// outcome is an error: at the field's value when found, otherwise at the innermost mapping or
/// sequence that lacks the next step. Keys may contain dots: each key of a mapping is tried as a
/// prefix of the rest of the path.
struct Locate<'a> {
    rest: &'a str,
}

impl<'de> DeserializeSeed<'de> for Locate<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl Locate<'_> {
    fn here<E: de::Error>() -> E {
        E::custom("located")
    }
}

impl<'de> de::Visitor<'de> for Locate<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Scalars end the walk, through the default `visit_*` methods' errors.
        f.write_str("the located field")
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if self.rest.is_empty() {
            return Err(Self::here());
        }
        while let Some(key) = map.next_key::<Value>()? {
            let key = match key {
                Value::String(s) => s,
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => String::new(),
            };
            let rest = match self.rest.strip_prefix(key.as_str()) {
                Some("") => Some(""),
                Some(rest) if rest.starts_with('[') => Some(rest),
                Some(rest) => rest.strip_prefix('.'),
                None => None,
            };
            match rest {
                Some(rest) if !key.is_empty() => {
                    return map.next_value_seed(Locate { rest });
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Err(Self::here())
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let step = self.rest.strip_prefix('[').and_then(|r| r.split_once(']'));
        let Some((index, rest)) = step.and_then(|(i, r)| Some((i.parse::<usize>().ok()?, r)))
        else {
            return Err(Self::here());
        };
        let rest = rest.strip_prefix('.').unwrap_or(rest);
        for _ in 0..index {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Err(Self::here());
            }
        }
        match seq.next_element_seed(Locate { rest })? {
            Some(()) | None => Err(Self::here()),
        }
    }
}

/// Every selector-valued field that does not parse as Calico's selector language, with the
/// parser's position and expectation in the message.
fn selector_problems(resource: &Resource) -> Vec<FieldError> {
    resource
        .selector_fields()
        .into_iter()
        .filter_map(|(field, text)| {
            Selector::parse(text).err().map(|e| FieldError {
                field,
                message: format!("invalid selector {text:?}: {e}"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::{
        super::resources::{MacAddr, Protocol, ResourceKey},
        *,
    };

    const EXAMPLE: &str = r#"apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: node1-cni-c0ffee-eth0, namespace: default, labels: {app: web}}
spec: {node: node1, orchestrator: cni, workload: c0ffee, endpoint: eth0, interfaceName: cali0ef24ba1c2d,
       mac: "ca:fe:1d:52:bb:e9", ipNetworks: [198.18.0.24/32, "2001:db8::24/128"], profiles: [default-net],
       ports: [{name: http, protocol: TCP, port: 8080}]}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: allow-web, namespace: default}
spec:
  order: 100
  selector: app == 'web'
  types: [Ingress]
  ingress:
  - {action: Allow, protocol: TCP, source: {selector: role == 'frontend'}, destination: {ports: [http, "8000:8080"]}}
---
apiVersion: projectcalico.org/v3
kind: Profile
metadata: {name: default-net}
spec: {ingress: [{action: Allow}], egress: [{action: Allow}]}
"#;

    /// A valid WorkloadEndpoint document with `extra` spliced into its spec (indented by 2).
    fn wep(name: &str, extra: &str) -> String {
        format!(
            "apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\nmetadata:\n  name: {name}\nspec:\n  node: node1\n  interfaceName: cali{name}\n{extra}"
        )
    }

    fn errors(text: &str) -> Vec<DatastoreError> {
        match parse_file("web.yaml", text) {
            Ok(resources) => panic!("expected errors, parsed {resources:#?}"),
            Err(errors) => errors,
        }
    }

    /// The single error parsing `text` gives.
    fn error(text: &str) -> DatastoreError {
        let mut errors = errors(text);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        errors.remove(0)
    }

    fn ok(text: &str) -> Vec<Resource> {
        match parse_file("web.yaml", text) {
            Ok(resources) => resources,
            Err(errors) => panic!(
                "unexpected errors: {}",
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        }
    }

    fn net(s: &str) -> ipnet::IpNet {
        s.parse().unwrap()
    }

    /// Found by the resource fuzz target: lines end at a lone CR too (as YAML and editors
    /// have it), in the split into documents as well as inside a document, so that an error
    /// in a later document names its line as an editor shows it.
    #[test]
    fn error_lines_count_carriage_returns_as_yaml_does() {
        let text = "apiVersion: projectcalico.org/v3\rkind: Profile\r\nmetadata: {name: a}\r---\n\
            apiVersion: projectcalico.org/v3\rkind: Profile\rmetadata: {name: b, bogus: 1}\n";
        let e = error(text);
        assert_eq!(
            (e.document, e.line, e.column),
            (Some(2), Some(7), Some(21)),
            "{e}"
        );
        // Both resources of the valid version, the second in document 2 from line 4.
        let fixed = text.replace(", bogus: 1", "");
        assert_eq!(ok(&fixed).len(), 2);
        let located = parse_file_located("web.yaml", &fixed).expect("valid");
        assert_eq!((located[1].document, located[1].line), (2, 4));
    }

    #[test]
    fn example_parses() {
        let resources = ok(EXAMPLE);
        assert_eq!(resources.len(), 3);

        let wep = resources[0].as_workload_endpoint().unwrap();
        assert_eq!(wep.name(), "node1-cni-c0ffee-eth0");
        assert_eq!(wep.namespace(), "default");
        assert_eq!(
            wep.metadata.labels.get("app").map(String::as_str),
            Some("web")
        );
        assert_eq!(wep.spec.node, "node1");
        assert_eq!(wep.spec.orchestrator.as_deref(), Some("cni"));
        assert_eq!(wep.spec.workload.as_deref(), Some("c0ffee"));
        assert_eq!(wep.spec.endpoint.as_deref(), Some("eth0"));
        assert_eq!(wep.spec.interface_name, "cali0ef24ba1c2d");
        assert_eq!(
            wep.spec.mac,
            Some(MacAddr::new([0xca, 0xfe, 0x1d, 0x52, 0xbb, 0xe9]))
        );
        assert_eq!(
            wep.spec.ip_networks,
            vec![net("198.18.0.24/32"), net("2001:db8::24/128")]
        );
        assert_eq!(wep.spec.profiles, vec!["default-net".to_owned()]);
        assert_eq!(wep.spec.ports.len(), 1);
        assert_eq!(wep.spec.ports[0].name.as_deref(), Some("http"));
        assert_eq!(wep.spec.ports[0].protocol, Protocol::Tcp);
        assert_eq!(wep.spec.ports[0].port, 8080);
        assert_eq!(wep.spec.ports[0].host_port, None);
        assert_eq!(
            resources[0].key(),
            ResourceKey {
                kind: Kind::WorkloadEndpoint,
                namespace: Some("default".into()),
                name: "node1-cni-c0ffee-eth0".into()
            }
        );

        assert_eq!(resources[1].kind(), Kind::NetworkPolicy);
        assert_eq!(
            resources[1].key().to_string(),
            "NetworkPolicy default/allow-web"
        );
        let policy = resources[1].as_network_policy().unwrap();
        assert_eq!(policy.spec.effective_order(), 100.0);
        assert_eq!(
            policy.spec.ingress[0].destination.ports[1],
            super::super::resources::PortSpec::Range(8000, 8080)
        );

        assert_eq!(resources[2].kind(), Kind::Profile);
        assert_eq!(resources[2].key().to_string(), "Profile default-net");
        assert_eq!(resources[2].metadata().namespace, None);
    }

    #[test]
    fn every_workload_endpoint_field() {
        let text = r#"
# As calicoctl writes it, plus every optional field.
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata:
  name: node1-k8s-web--1-eth0
  namespace: prod
  uid: 0c2b5c7e-4d4c-4b8e-9a57-6f0f3c2a9b11
  resourceVersion: "1234"
  creationTimestamp: "2024-05-01T10:00:00Z"
  generation: 1
  generateName: web-
  labels: {app: web, projectcalico.org/namespace: prod}
  annotations: {note: "hello"}
  finalizers: []
  ownerReferences: [{apiVersion: v1, kind: Pod, name: web-1, uid: x}]
  managedFields: null
  selfLink: ""
spec:
  orchestrator: k8s
  workload: ""
  node: node1
  containerID: 4a2f0c9d1e
  pod: web-1
  endpoint: eth0
  serviceAccountName: default
  ipNetworks: [198.18.0.7, "2001:db8::7"]
  ipNATs: [{internalIP: 198.18.0.7, externalIP: 198.19.0.7}]
  ipv4Gateway: 198.18.0.1
  ipv6Gateway: "2001:db8::1"
  profiles: [kns.prod, ksa.prod.default]
  interfaceName: cali1234567890a
  mac: "CA-FE-00-00-00-07"
  ports:
  - {name: http, protocol: TCP, port: 80, hostPort: 0, hostIP: ""}
  - {name: "", protocol: UDP, port: 53, hostPort: 5353, hostIP: 198.19.0.1}
  - {name: sctp-port, protocol: 132, port: 9}
  allowSpoofedSourcePrefixes: [198.18.128.7/17]
  qosControls: {ingressBandwidth: 1000000, egressBurst: 4294967296, ingressPacketRate: 100, dscp: AF11}
  awsElasticIPs: [198.19.0.100]
"#;
        let resources = ok(text);
        let wep = resources[0].as_workload_endpoint().unwrap();
        let spec = &wep.spec;
        assert_eq!(wep.namespace(), "prod");
        assert_eq!(wep.metadata.resource_version.as_deref(), Some("1234"));
        assert_eq!(
            wep.metadata.creation_timestamp.as_deref(),
            Some("2024-05-01T10:00:00Z")
        );
        assert_eq!(wep.metadata.self_link, None);
        assert_eq!(spec.workload, None);
        assert_eq!(spec.container_id.as_deref(), Some("4a2f0c9d1e"));
        assert_eq!(
            spec.ip_networks,
            vec![net("198.18.0.7/32"), net("2001:db8::7/128")]
        );
        assert_eq!(
            spec.ip_nats[0].external_ip,
            "198.19.0.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(spec.ipv4_gateway, Some("198.18.0.1".parse().unwrap()));
        assert_eq!(spec.ipv6_gateway, Some("2001:db8::1".parse().unwrap()));
        assert_eq!(
            spec.mac.map(|m| m.to_string()).as_deref(),
            Some("ca:fe:00:00:00:07")
        );
        assert_eq!(spec.ports[0].host_port, None);
        assert_eq!(spec.ports[0].host_ip, None);
        assert_eq!(spec.ports[1].name, None);
        assert_eq!(spec.ports[1].host_port, Some(5353));
        assert_eq!(spec.ports[1].host_ip, Some("198.19.0.1".parse().unwrap()));
        assert_eq!(spec.ports[2].protocol, Protocol::Number(132));
        // Calico accepts host bits here and clears them.
        assert_eq!(
            spec.allow_spoofed_source_prefixes,
            vec![net("198.18.128.0/17")]
        );
        let qos = spec.qos_controls.as_ref().unwrap();
        assert_eq!(qos.ingress_bandwidth, 1_000_000);
        assert_eq!(qos.egress_burst, 4_294_967_296);
        assert_eq!(qos.egress_bandwidth, 0);
        assert_eq!(qos.dscp.map(|d| d.value()), Some(10));
        assert_eq!(
            spec.aws_elastic_ips,
            vec!["198.19.0.100".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn bare_ips_are_host_networks_and_other_prefixes_are_kept() {
        let resources = ok(&wep(
            "a",
            "  ipNetworks: [198.18.0.9, \"2001:db8::9\", 198.18.4.0/24]\n",
        ));
        let wep = resources[0].as_workload_endpoint().unwrap();
        assert_eq!(
            wep.spec.ip_networks,
            vec![
                net("198.18.0.9/32"),
                net("2001:db8::9/128"),
                net("198.18.4.0/24")
            ]
        );
    }

    #[test]
    fn namespace_defaults_for_namespaced_kinds_only() {
        let resources = ok(&wep("a", ""));
        assert_eq!(
            resources[0].metadata().namespace.as_deref(),
            Some("default")
        );
        let e = error(
            "apiVersion: projectcalico.org/v3\nkind: Profile\nmetadata: {name: p, namespace: prod}\n",
        );
        assert_eq!(e.field.as_deref(), Some("metadata.namespace"));
        assert_eq!(e.resource.as_deref(), Some("Profile prod/p"));
        assert!(e.message.contains("not namespaced"), "{e}");
    }

    #[test]
    fn validation_errors_name_file_document_resource_and_field() {
        // (spec lines, field, part of the message)
        let cases: &[(&str, &str, &str)] = &[
            (
                "  mac: zz:00:00:00:00:01\n",
                "spec.mac",
                r#"invalid MAC address "zz:00:00:00:00:01""#,
            ),
            (
                "  ipNetworks: [198.18.0.1, 198.18.0.300/32]\n",
                "spec.ipNetworks[1]",
                r#"invalid CIDR "198.18.0.300/32""#,
            ),
            (
                "  ipNetworks: [198.18.0.5/24]\n",
                "spec.ipNetworks[0]",
                "host bits",
            ),
            (
                "  allowSpoofedSourcePrefixes: [198.18.0.0/33]\n",
                "spec.allowSpoofedSourcePrefixes[0]",
                "invalid CIDR",
            ),
            (
                "  ipv4Gateway: \"2001:db8::1\"\n",
                "spec.ipv4Gateway",
                "invalid IPv4 address",
            ),
            (
                "  ipv6Gateway: 198.18.0.1\n",
                "spec.ipv6Gateway",
                "invalid IPv6 address",
            ),
            (
                "  ports: [{name: http, protocol: TCP, port: 0}]\n",
                "spec.ports[0].port",
                "between 1 and 65535",
            ),
            (
                "  ports: [{name: http, protocol: TCP, port: 65536}]\n",
                "spec.ports[0].port",
                "between 1 and 65535",
            ),
            (
                "  ports: [{name: http, protocol: ICMP, port: 1}]\n",
                "spec.ports[0].protocol",
                "has no ports",
            ),
            (
                "  ports: [{name: http, protocol: 1, port: 1}]\n",
                "spec.ports[0].protocol",
                "has no ports",
            ),
            (
                "  ports: [{name: http, protocol: tcpx, port: 1}]\n",
                "spec.ports[0].protocol",
                "invalid protocol",
            ),
            (
                "  ports: [{name: http, port: 1}]\n",
                "spec.ports[0]",
                "missing field `protocol`",
            ),
            (
                "  ports: [{name: HTTP, protocol: TCP, port: 1}]\n",
                "spec.ports[0].name",
                "invalid port name",
            ),
            (
                "  ports: [{protocol: TCP, port: 1}]\n",
                "spec.ports[0]",
                "needs a name",
            ),
            (
                "  ports: [{name: http, protocol: TCP, port: 1, hostIP: 198.18.0.0/24}]\n",
                "spec.ports[0].hostIP",
                "single address",
            ),
            (
                "  ipNATs: [{internalIP: 198.18.0.1, externalIP: 198.19.0.1}]\n",
                "spec.ipNATs[0].internalIP",
                "not in the endpoint's ipNetworks",
            ),
            (
                "  ipNATs: [{internalIP: 198.18.0.1}]\n",
                "spec.ipNATs[0]",
                "missing field `externalIP`",
            ),
            (
                "  profiles: [Default]\n",
                "spec.profiles[0]",
                "invalid name",
            ),
            (
                "  containerID: -abc\n",
                "spec.containerID",
                "invalid container ID",
            ),
            (
                "  qosControls: {dscp: 64}\n",
                "spec.qosControls.dscp",
                "between 0 and 63",
            ),
            (
                "  qosControls: {ingressBandwidth: -1}\n",
                "spec.qosControls.ingressBandwidth",
                "negative",
            ),
            (
                "  awsElasticIPs: [nope]\n",
                "spec.awsElasticIPs[0]",
                "invalid IP address",
            ),
            ("  status: {}\n", "spec.status", "unknown field `status`"),
        ];
        for (extra, field, message) in cases {
            let text = format!("{EXAMPLE}---\n{}", wep("wep1", extra));
            let e = error(&text);
            assert_eq!(e.file, "web.yaml", "{e}");
            assert_eq!(e.document, Some(4), "{e}");
            assert_eq!(
                e.resource.as_deref(),
                Some("WorkloadEndpoint default/wep1"),
                "{e}"
            );
            assert_eq!(e.field.as_deref(), Some(*field), "{e}");
            assert!(e.message.contains(message), "{e}");
            // Problems are placed at their field, whether found while deserializing or after.
            assert_eq!(e.line, Some(30), "{e}");
            assert!(e.column.is_some(), "{e}");
            let shown = e.to_string();
            assert!(shown.starts_with("web.yaml:"), "{shown}");
            assert!(
                shown.contains(&format!(
                    "document 4 (WorkloadEndpoint default/wep1): {field}: "
                )),
                "{shown}"
            );
        }
    }

    #[test]
    fn errors_found_while_deserializing_have_line_and_column() {
        let text = format!(
            "{EXAMPLE}---\n{}",
            wep(
                "wep1",
                "  ipNetworks:\n  - 198.18.0.1\n  - 198.18.0.300/32\n"
            )
        );
        let e = error(&text);
        assert_eq!((e.line, e.column), (Some(32), Some(5)), "{e}");
        assert_eq!(
            e.to_string(),
            "web.yaml:32:5: document 4 (WorkloadEndpoint default/wep1): spec.ipNetworks[1]: \
             invalid CIDR \"198.18.0.300/32\": invalid IP address syntax"
        );
    }

    #[test]
    fn required_fields() {
        let missing_node = "apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\nmetadata: {name: w}\nspec: {interfaceName: cali1}\n";
        let e = error(missing_node);
        assert_eq!(
            (e.field.as_deref(), e.message.as_str()),
            (Some("spec"), "missing field `node`")
        );

        let missing_iface = "apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\nmetadata: {name: w}\nspec: {node: n}\n";
        let e = error(missing_iface);
        assert_eq!(
            (e.field.as_deref(), e.message.as_str()),
            (Some("spec"), "missing field `interfaceName`")
        );

        for (iface, message) in [
            ("\"\"", "must not be empty"),
            ("cali0123456789ab", "1-15 characters"),
            ("\"a b\"", "1-15 characters"),
        ] {
            let text = format!(
                "apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\nmetadata: {{name: w}}\nspec: {{node: n, interfaceName: {iface}}}\n"
            );
            let e = error(&text);
            assert_eq!(e.field.as_deref(), Some("spec.interfaceName"));
            assert!(e.message.contains(message), "{e}");
        }

        let e = error(
            "apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\nmetadata: {name: w}\n",
        );
        assert_eq!(e.message, "missing field `spec`");
        let e = error(
            "apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\nmetadata: {namespace: x}\nspec: {node: n, interfaceName: c}\n",
        );
        assert_eq!(
            (e.field.as_deref(), e.message.as_str()),
            (Some("metadata"), "missing field `name`")
        );
        assert_eq!(e.resource.as_deref(), Some("WorkloadEndpoint x/<unnamed>"));
        let e = error(
            "apiVersion: projectcalico.org/v3\nkind: Profile\nmetadata: {name: Not_A_Name}\n",
        );
        assert_eq!(e.field.as_deref(), Some("metadata.name"));
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let e = error(&wep("w", "  interfaceNmae: cali9\n"));
        assert_eq!(e.field.as_deref(), Some("spec.interfaceNmae"));
        assert!(
            e.message.starts_with("unknown field `interfaceNmae`"),
            "{e}"
        );
        assert_eq!((e.line, e.column), (Some(8), Some(3)));

        let e = error(
            "apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\nmetadata: {name: w, colour: red}\nspec: {node: n, interfaceName: c}\n",
        );
        assert_eq!(e.field.as_deref(), Some("metadata.colour"));

        let e = error(
            "apiVersion: projectcalico.org/v3\nkind: Profile\nmetadata: {name: p}\nextra: 1\n",
        );
        assert_eq!(e.field.as_deref(), Some("extra"));
        assert_eq!(e.resource.as_deref(), Some("Profile p"));

        let e = error(&wep(
            "w",
            "  ports: [{name: http, protocol: TCP, port: 80, targetPort: 81}]\n",
        ));
        assert_eq!(e.field.as_deref(), Some("spec.ports[0].targetPort"));
    }

    #[test]
    fn unknown_kind_and_api_version() {
        let e = error("apiVersion: projectcalico.org/v3\nkind: Pod\nmetadata: {name: p}\n");
        assert_eq!(
            (e.kind, e.field.as_deref()),
            (ErrorKind::Unsupported, Some("kind"))
        );
        assert!(e.message.contains("unknown \"Pod\""), "{e}");

        let e = error(
            "apiVersion: crd.projectcalico.org/v1\nkind: WorkloadEndpoint\nmetadata: {name: p}\n",
        );
        assert_eq!(
            (e.kind, e.field.as_deref()),
            (ErrorKind::Unsupported, Some("apiVersion"))
        );
        assert_eq!(
            e.message,
            "unsupported \"crd.projectcalico.org/v1\" (expected projectcalico.org/v3)"
        );
        assert_eq!(e.resource.as_deref(), Some("WorkloadEndpoint default/p"));

        let e = error("kind: WorkloadEndpoint\nmetadata: {name: p}\n");
        assert_eq!(
            (e.field.as_deref(), e.message.as_str()),
            (
                Some("apiVersion"),
                "missing (expected projectcalico.org/v3)"
            )
        );

        let e = error("apiVersion: projectcalico.org/v3\nmetadata: {name: p}\n");
        assert_eq!(e.field.as_deref(), Some("kind"));

        let e = error("just a string\n");
        assert_eq!(e.kind, ErrorKind::Unsupported);
    }

    #[test]
    fn malformed_yaml_reports_line_and_column() {
        let text = format!(
            "{EXAMPLE}---\napiVersion: projectcalico.org/v3\nkind: Profile\nmetadata: {{name: p\nspec: {{}}\n"
        );
        let e = error(&text);
        assert_eq!(e.kind, ErrorKind::Syntax);
        assert_eq!(e.document, Some(4));
        assert_eq!((e.line, e.column), (Some(26), Some(5)), "{e}");
        assert!(
            e.to_string().starts_with("web.yaml:26:5: document 4: "),
            "{e}"
        );
        // Other locations in the message are the file's lines too.
        assert!(e.message.contains("line 25"), "{e}");

        let e = error("apiVersion: projectcalico.org/v3\nkind: Profile\n\tmetadata: {}\n");
        assert_eq!((e.kind, e.line), (ErrorKind::Syntax, Some(3)));
    }

    #[test]
    fn whole_file_is_rejected_with_every_error() {
        let text = format!(
            "{}\n---\n{}---\n{}",
            wep("a", "  mac: nope\n"),
            wep("b", ""),
            wep("c", "  ipNetworks: [nope]\n")
        );
        let errors = errors(&text);
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert_eq!(
            (errors[0].document, errors[0].field.as_deref()),
            (Some(1), Some("spec.mac"))
        );
        assert_eq!(
            (errors[1].document, errors[1].field.as_deref()),
            (Some(3), Some("spec.ipNetworks[0]"))
        );
    }

    #[test]
    fn empty_documents_comments_and_json() {
        assert_eq!(ok(""), vec![]);
        assert_eq!(ok("# nothing here\n\n---\n---\n# still nothing\n"), vec![]);
        let text = format!(
            "# leading comment\n---\n{}\n---\n\n---\n{}...\n",
            wep("a", ""),
            wep("b", "")
        );
        let resources = ok(&text);
        assert_eq!(
            resources.iter().map(|r| r.key().name).collect::<Vec<_>>(),
            ["a", "b"]
        );

        let crlf =
            format!("{}---\n{}", wep("a", ""), wep("b", "  mac: nope\n")).replace('\n', "\r\n");
        let e = error(&crlf);
        assert_eq!(
            (e.document, e.line, e.field.as_deref()),
            (Some(2), Some(16), Some("spec.mac")),
            "{e} {crlf:?}"
        );

        let json = r#"{"apiVersion": "projectcalico.org/v3", "kind": "WorkloadEndpoint",
                       "metadata": {"name": "j", "namespace": "ns1"},
                       "spec": {"node": "node1", "interfaceName": "calij", "ipNetworks": ["198.18.0.77/32"]}}"#;
        let resources = ok(json);
        assert_eq!(resources[0].key().to_string(), "WorkloadEndpoint ns1/j");
    }

    #[test]
    fn lists_are_flattened() {
        let text = r#"
apiVersion: v1
kind: List
items:
- apiVersion: projectcalico.org/v3
  kind: Profile
  metadata: {name: p1}
- apiVersion: projectcalico.org/v3
  kind: WorkloadEndpoint
  metadata: {name: w1, namespace: ns1}
  spec: {node: n, interfaceName: caliw1}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpointList
metadata: {resourceVersion: "99"}
items:
- metadata: {name: w2}
  spec: {node: n, interfaceName: caliw2}
- apiVersion: projectcalico.org/v3
  kind: WorkloadEndpoint
  metadata: {name: w3}
  spec: {node: n, interfaceName: caliw3}
---
- apiVersion: projectcalico.org/v3
  kind: GlobalNetworkSet
  metadata: {name: gns}
  spec: {nets: [198.18.0.0/24]}
---
apiVersion: projectcalico.org/v3
kind: ProfileList
items: null
"#;
        let keys: Vec<String> = ok(text).iter().map(|r| r.key().to_string()).collect();
        assert_eq!(
            keys,
            [
                "Profile p1",
                "WorkloadEndpoint ns1/w1",
                "WorkloadEndpoint default/w2",
                "WorkloadEndpoint default/w3",
                "GlobalNetworkSet gns"
            ]
        );
    }

    #[test]
    fn list_errors_name_the_item() {
        let text = "apiVersion: projectcalico.org/v3\nkind: WorkloadEndpointList\nitems:\n- metadata: {name: ok}\n  spec: {node: n, interfaceName: c1}\n- metadata: {name: bad}\n  spec: {node: n, interfaceName: c2, mac: nope}\n";
        let e = error(text);
        assert_eq!(e.field.as_deref(), Some("items[1].spec.mac"));
        assert_eq!(e.resource.as_deref(), Some("WorkloadEndpoint default/bad"));
        // Located in the text, although the item was deserialized from a parsed value.
        assert_eq!((e.document, e.line, e.column), (Some(1), Some(7), Some(43)));

        let e = error(
            "apiVersion: projectcalico.org/v3\nkind: WorkloadEndpointList\nitems:\n- {kind: Profile, metadata: {name: p}}\n",
        );
        assert_eq!(e.field.as_deref(), Some("items[0].kind"));

        let e = error(
            "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: List, items: []}\n",
        );
        assert!(e.message.contains("nested"), "{e}");

        let e = error(
            "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Pod, metadata: {name: x}}\n",
        );
        assert_eq!(
            (e.kind, e.field.as_deref()),
            (ErrorKind::Unsupported, Some("items[0].apiVersion"))
        );

        let e = error("apiVersion: v1\nkind: FooList\nitems: []\n");
        assert_eq!(e.kind, ErrorKind::Unsupported);

        let e = error("apiVersion: v1\nkind: List\nitems: []\nextra: 1\n");
        assert_eq!(e.field.as_deref(), Some("extra"));
    }

    #[test]
    fn duplicates_within_a_file_are_errors() {
        let text = format!("{}---\n{}", wep("a", ""), wep("a", ""));
        let e = error(&text);
        assert_eq!((e.kind, e.document), (ErrorKind::Duplicate, Some(2)));
        assert_eq!(e.resource.as_deref(), Some("WorkloadEndpoint default/a"));
    }

    #[test]
    fn metadata_labels_and_annotations_are_checked() {
        let text = "apiVersion: projectcalico.org/v3\nkind: Profile\nmetadata:\n  name: p\n  labels: {\"bad key!\": x, good: \"bad value!\"}\n  annotations: {\"a/b/c\": x}\n";
        let errors = errors(text);
        let fields: Vec<_> = errors
            .iter()
            .map(|e| e.field.as_deref().unwrap_or(""))
            .collect();
        assert_eq!(
            fields,
            [
                "metadata.labels",
                "metadata.labels.good",
                "metadata.annotations"
            ],
            "{errors:#?}"
        );
        assert!(
            errors
                .iter()
                .all(|e| e.resource.as_deref() == Some("Profile p"))
        );
        let lines: Vec<_> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [Some(5), Some(5), Some(6)], "{errors:#?}");
    }

    #[test]
    fn other_kinds_are_kept_untyped() {
        /// Whether the registry types a kind.
        struct IsTyped;
        impl crate::datastore::resources::KindVisitor for IsTyped {
            type Output = bool;
            fn typed<K: crate::datastore::resources::Registered>(self) -> bool {
                true
            }
            fn untyped(
                self,
                _: Kind,
                _: fn(crate::datastore::resources::UntypedResource) -> Resource,
            ) -> bool {
                false
            }
        }
        for kind in Kind::ALL.iter().filter(|k| !k.visit(IsTyped)) {
            let text = format!(
                "apiVersion: projectcalico.org/v3\nkind: {kind}\nmetadata: {{name: x}}\nspec: {{anything: [1, 2]}}\nstatus: {{ok: true}}\n"
            );
            let resources = ok(&text);
            let r = resources[0].as_untyped().unwrap();
            assert_eq!(r.kind, *kind);
            assert_eq!(r.spec, serde_json::json!({"anything": [1, 2]}));
            assert_eq!(r.status, Some(serde_json::json!({"ok": true})));
            assert_eq!(r.metadata.namespace.is_some(), kind.is_namespaced());
        }
        let e = error(
            "apiVersion: projectcalico.org/v3\nkind: BGPFilter\nmetadata: {name: t}\nspec: [1]\n",
        );
        assert_eq!(e.field.as_deref(), Some("spec"));
    }

    #[test]
    fn documents_split_where_yaml_says() {
        let text = "%YAML 1.2\n---\na: 1\n--- {b: 2}\n...\nc: 3\n---\n#x\n";
        let chunks = split_documents(text);
        let starts: Vec<_> = chunks.iter().map(|c| c.first_line).collect();
        assert_eq!(starts, [1, 4, 6, 7]);
        assert_eq!(chunks[1].text, "--- {b: 2}\n...\n");
        // `---` not at the start of a line, or followed by text, is content.
        let chunks = split_documents("a: \"x\n  ---\"\nb: ---x\n");
        assert_eq!(chunks.len(), 1);
    }
}
