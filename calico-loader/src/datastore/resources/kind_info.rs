//! A kind's facts: its name, its plural, the short names the CLI accepts, whether it is
//! namespaced, and how its resources are keyed in etcd ([`EtcdKeys`]).
//!
//! Every kind of the registry has one [`KindInfo`]: a typed kind gives it as its
//! `ResourceKind::INFO`, an untyped kind on its registry line. Nothing here knows the kinds
//! themselves, so the key layouts below serve any of them.

use std::fmt;

use serde_json::{Map, Value};

use super::{fields::FieldError, policy::DEFAULT_TIER};

/// Where every Calico v3 resource lives in etcd (libcalico-go's `lib/backend/etcdv3` layout).
pub const KEY_PREFIX: &str = "/calico/resources/v3/projectcalico.org/";

/// What the datastore, the etcd layout and the CLI need to know of a kind.
#[derive(Clone, Copy, Debug)]
pub struct KindInfo {
    /// The kind's name as written in `kind:`, exactly as Calico spells it (`IPPool`).
    pub name: &'static str,
    /// Calico's plural (`ippools`): in etcd keys, in the CLI, and in the local store's paths.
    pub plural: &'static str,
    /// Other names the CLI accepts, lower case (calicoctl's: `ipp`, `pool`...). The name in any
    /// case and the plural are always accepted.
    pub short_names: &'static [&'static str],
    /// Whether resources of the kind live in a namespace.
    pub namespaced: bool,
    /// How its resources are keyed in etcd.
    pub etcd: &'static dyn EtcdKeys,
}

impl KindInfo {
    /// A cluster-scoped kind, keyed in etcd with Calico's v3 layout.
    pub const fn cluster(
        name: &'static str,
        plural: &'static str,
        short_names: &'static [&'static str],
    ) -> Self {
        Self {
            name,
            plural,
            short_names,
            namespaced: false,
            etcd: &V3Keys,
        }
    }

    /// A namespaced kind, keyed in etcd with Calico's v3 layout.
    pub const fn namespaced(
        name: &'static str,
        plural: &'static str,
        short_names: &'static [&'static str],
    ) -> Self {
        Self {
            namespaced: true,
            ..Self::cluster(name, plural, short_names)
        }
    }

    /// The same kind, keyed in etcd by `etcd` instead.
    pub const fn with_etcd_keys(self, etcd: &'static dyn EtcdKeys) -> Self {
        Self { etcd, ..self }
    }

    /// Whether the CLI's `text` names this kind: its name in any case, its plural, or one of
    /// its short names.
    pub fn is_called(&self, text: &str) -> bool {
        let lower = text.to_ascii_lowercase();
        self.name.eq_ignore_ascii_case(text)
            || self.plural == lower
            || self.short_names.contains(&lower.as_str())
    }
}

/// Which Calico release's format a key-value is stored in. Only a default-tier policy has two:
/// see [`PolicyKeys`]. Forms order newest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StoredForm {
    /// Under the resource's own name: every kind, and the policies as Calico 3.32 stores them.
    Current,
    /// Under `default.<name>`: a default-tier policy as Calico 3.28 to 3.31 stored it.
    Tiered,
}

impl StoredForm {
    /// Which Calico versions write the form, for messages.
    pub fn calico_versions(self) -> &'static str {
        match self {
            StoredForm::Current => "Calico 3.32",
            StoredForm::Tiered => "Calico 3.28-3.31",
        }
    }
}

/// How a kind's resources are keyed in etcd, and what the store adds to their values. Most kinds
/// use Calico's v3 layout ([`V3Keys`]); the policy kinds add the name annotation and read the
/// keys of older Calico versions too ([`PolicyKeys`]); a kind stored elsewhere (IPAM's
/// `/calico/ipam/v2/...`) gives its own.
pub trait EtcdKeys: Sync + fmt::Debug {
    /// The prefix of every key of the kind: of those in `namespace` when one is given and the
    /// kind is namespaced.
    fn prefix(&self, kind: &KindInfo, namespace: Option<&str>) -> String;

    /// The key the resource the user calls `name` (in `namespace`, for a namespaced kind) is
    /// stored at in `form`, if the form applies to it. Every resource has a
    /// [`StoredForm::Current`] key.
    fn key(
        &self,
        kind: &KindInfo,
        namespace: Option<&str>,
        name: &str,
        form: StoredForm,
    ) -> Option<String>;

    /// The namespace (for a namespaced kind) and the name part of `key`, as it is in the key,
    /// if `key` is one of the kind's keys.
    fn parse(&self, kind: &KindInfo, key: &str) -> Option<(Option<String>, String)>;

    /// Reads a value stored under the key name part `stored`: the name the user knows it by.
    /// Takes out of `value` what the store added to it.
    ///
    /// # Errors
    ///
    /// A value whose stored additions do not read, with the field's path.
    fn read_value(&self, stored: &str, value: &mut Value) -> Result<String, FieldError> {
        let _ = value;
        Ok(stored.to_owned())
    }

    /// Completes `value` (a resource object) as the store writes it for the resource the user
    /// calls `name`, in `form`: at least `metadata.name`, the key's name part.
    fn write_value(&self, name: &str, form: StoredForm, value: &mut Value) {
        let _ = form;
        if let Some(metadata) = value.get_mut("metadata").and_then(Value::as_object_mut) {
            metadata.insert("name".into(), name.into());
        }
    }

    /// Whether the kind lives outside the v3 tree ([`KEY_PREFIX`]), in a value of its own
    /// shape (IPAM's `/calico/ipam/v2/config`). Such a kind's value goes through
    /// [`encode_value`](Self::encode_value) and [`decode_value`](Self::decode_value); the local
    /// directory keeps it in the file at its key's path without `/calico/`
    /// (`<dir>/ipam/v2/config`), with the same text; and a key under the v3 tree in the kind's
    /// plural (what calicoctl writes there) is not the kind's and is passed over.
    fn stores_outside_v3(&self) -> bool {
        false
    }

    /// The value to store for the v3 object `object` (its `metadata` filled in, completed by
    /// [`write_value`](Self::write_value)): the object's JSON itself, unless the layout stores
    /// another shape.
    ///
    /// # Errors
    ///
    /// The object cannot be put in the stored shape (it was validated before, so this is a
    /// bug's message).
    fn encode_value(&self, object: &serde_json::Value) -> Result<String, String> {
        serde_json::to_string(object).map_err(|e| e.to_string())
    }

    /// The v3 object (`apiVersion`, `kind`, `metadata`, `spec`) the stored `value` under the
    /// key name part `name` stands for: the value's JSON itself, unless the layout stores
    /// another shape. [`read_value`](Self::read_value) then reads the object.
    ///
    /// # Errors
    ///
    /// The value is not JSON, or not of the stored shape.
    fn decode_value(
        &self,
        kind: &KindInfo,
        name: &str,
        value: &[u8],
    ) -> Result<serde_json::Value, String> {
        let _ = (kind, name);
        serde_json::from_slice(value).map_err(|e| format!("value is not JSON: {e}"))
    }
}

/// Whether `key` is under the v3 tree in the plural of `kind` (a key calicoctl would write for
/// it there).
pub fn is_v3_key_of(kind: &KindInfo, key: &str) -> bool {
    key.starts_with(&v3_prefix(kind, None))
}

/// Calico's v3 layout: [`KEY_PREFIX`]`<plural>/<name>` for cluster-scoped kinds,
/// [`KEY_PREFIX`]`<plural>/<namespace>/<name>` for namespaced ones.
#[derive(Debug)]
pub struct V3Keys;

impl EtcdKeys for V3Keys {
    fn prefix(&self, kind: &KindInfo, namespace: Option<&str>) -> String {
        v3_prefix(kind, namespace)
    }

    fn key(
        &self,
        kind: &KindInfo,
        namespace: Option<&str>,
        name: &str,
        form: StoredForm,
    ) -> Option<String> {
        (form == StoredForm::Current).then(|| format!("{}{name}", v3_prefix(kind, namespace)))
    }

    fn parse(&self, kind: &KindInfo, key: &str) -> Option<(Option<String>, String)> {
        v3_parse(kind, key).map(|(namespace, name)| (namespace, name.to_owned()))
    }
}

/// The annotation in which libcalico-go keeps a policy's name as the user gave it, as the JSON
/// `{"name":"<name>"}`: written since Calico 3.29.4 (`NetworkPolicy`, `GlobalNetworkPolicy`)
/// and 3.30 (their staged forms too), still by 3.32 (`etcdv3.storePolicyName`). Reading takes
/// it away again (`model.determinePolicyName`): users never see it.
pub const POLICY_NAME_ANNOTATION: &str = "projectcalico.org/metadata";

/// The label libcalico-go 3.32 gives a stored policy: its tier (`defaults.setTierLabel`).
pub const POLICY_TIER_LABEL: &str = "projectcalico.org/tier";

/// What Calico 3.28 to 3.31 put before a default-tier policy's name in etcd.
const DEFAULT_TIER_PREFIX: &str = "default.";

/// The policy kinds (`NetworkPolicy`, `GlobalNetworkPolicy` and their staged forms): the v3
/// layout under the policy's own name, as Calico 3.32 stores them, with
/// [`POLICY_NAME_ANNOTATION`], the [`POLICY_TIER_LABEL`] and the defaulted `spec.types` in the
/// value.
///
/// Calico 3.28 to 3.31 stored a policy whose name has no dot under `default.<name>`, in the key
/// and in `metadata.name` ([`StoredForm::Tiered`]; `names.BackendTieredPolicyName`). Those keys
/// still read as `<name>`. A key `default.<name>` is the tiered form of `<name>` unless its
/// value says otherwise: Calico 3.32 stores a policy the user named `default.<name>` there too,
/// and its annotation then holds `default.<name>`. So the key's name part is taken to be
/// tiered when the annotation holds `<name>`, or, with no annotation (3.28 to 3.29.3), when the
/// policy's tier is `default`, as `model.determinePolicyName` does. Other names (with a tier,
/// like `security.block`, or Kubernetes-derived ones, like `knp.default.x`) are stored as they
/// are by every version.
#[derive(Debug)]
pub struct PolicyKeys;

impl EtcdKeys for PolicyKeys {
    fn prefix(&self, kind: &KindInfo, namespace: Option<&str>) -> String {
        v3_prefix(kind, namespace)
    }

    fn key(
        &self,
        kind: &KindInfo,
        namespace: Option<&str>,
        name: &str,
        form: StoredForm,
    ) -> Option<String> {
        let stored = stored_policy_name(name, form)?;
        Some(format!("{}{stored}", v3_prefix(kind, namespace)))
    }

    fn parse(&self, kind: &KindInfo, key: &str) -> Option<(Option<String>, String)> {
        v3_parse(kind, key).map(|(namespace, name)| (namespace, name.to_owned()))
    }

    fn read_value(&self, stored: &str, value: &mut Value) -> Result<String, FieldError> {
        let annotated = take_policy_name_annotation(value)?;
        let Some(untiered) = untiered_policy_name(stored) else {
            return Ok(stored.to_owned());
        };
        let tiered = match annotated.as_deref() {
            Some(name) if name == stored => false,
            Some(name) if name == untiered => true,
            // No annotation (Calico 3.28 to 3.29.3), or one that names neither: the tier says.
            _ => policy_tier(value) == DEFAULT_TIER,
        };
        Ok(if tiered { untiered } else { stored }.to_owned())
    }

    fn write_value(&self, name: &str, form: StoredForm, value: &mut Value) {
        let tier = policy_tier(value).to_owned();
        if let Some(object) = value.as_object_mut() {
            let spec = object
                .entry("spec")
                .or_insert_with(|| Value::Object(Map::new()));
            if spec.is_null() {
                *spec = Value::Object(Map::new());
            }
            if let Some(spec) = spec.as_object_mut()
                && !has_items(spec, "types")
            {
                let types: &[&str] = match (has_items(spec, "ingress"), has_items(spec, "egress")) {
                    (_, false) => &["Ingress"],
                    (false, true) => &["Egress"],
                    (true, true) => &["Ingress", "Egress"],
                };
                spec.insert("types".into(), types.into());
            }
        }
        let Some(metadata) = value.get_mut("metadata").and_then(Value::as_object_mut) else {
            return;
        };
        let stored = stored_policy_name(name, form).unwrap_or_else(|| name.to_owned());
        metadata.insert("name".into(), stored.into());
        let labels = metadata
            .entry("labels")
            .or_insert_with(|| Value::Object(Map::new()));
        if !labels.is_object() {
            *labels = Value::Object(Map::new());
        }
        if let Some(labels) = labels.as_object_mut() {
            labels.insert(POLICY_TIER_LABEL.into(), tier.into());
        }
        let annotations = metadata
            .entry("annotations")
            .or_insert_with(|| Value::Object(Map::new()));
        if !annotations.is_object() {
            *annotations = Value::Object(Map::new());
        }
        if let Some(annotations) = annotations.as_object_mut() {
            let annotation = serde_json::json!({ "name": name }).to_string();
            annotations.insert(POLICY_NAME_ANNOTATION.into(), annotation.into());
        }
    }
}

/// The key name part of the policy the user calls `name`, stored in `form`: its own name, or
/// `default.<name>` for a name without a dot (`names.TieredPolicyName`).
fn stored_policy_name(name: &str, form: StoredForm) -> Option<String> {
    match form {
        StoredForm::Current => Some(name.to_owned()),
        StoredForm::Tiered => (!name.contains('.')).then(|| format!("{DEFAULT_TIER_PREFIX}{name}")),
    }
}

/// The name a key name part `default.<name>` stands for in Calico 3.28 to 3.31's form, if it is
/// one.
fn untiered_policy_name(stored: &str) -> Option<&str> {
    stored
        .strip_prefix(DEFAULT_TIER_PREFIX)
        .filter(|name| !name.is_empty() && !name.contains('.'))
}

/// Whether `object[field]` is a list with something in it.
fn has_items(object: &Map<String, Value>, field: &str) -> bool {
    object
        .get(field)
        .and_then(Value::as_array)
        .is_some_and(|items| !items.is_empty())
}

/// A policy value's tier: `spec.tier`, or `default` when it names none.
fn policy_tier(value: &Value) -> &str {
    match value.pointer("/spec/tier").and_then(Value::as_str) {
        Some(tier) if !tier.is_empty() => tier,
        _ => DEFAULT_TIER,
    }
}

/// Takes [`POLICY_NAME_ANNOTATION`] out of a policy value (and the annotations with it, if it
/// was the only one); the name it holds.
fn take_policy_name_annotation(value: &mut Value) -> Result<Option<String>, FieldError> {
    let field = || format!("metadata.annotations.{POLICY_NAME_ANNOTATION}");
    let Some(metadata) = value.get_mut("metadata").and_then(Value::as_object_mut) else {
        return Ok(None);
    };
    let Some(annotations) = metadata
        .get_mut("annotations")
        .and_then(Value::as_object_mut)
    else {
        return Ok(None);
    };
    let Some(annotation) = annotations.remove(POLICY_NAME_ANNOTATION) else {
        return Ok(None);
    };
    if annotations.is_empty() {
        metadata.remove("annotations");
    }
    let text = match &annotation {
        Value::String(text) if text.is_empty() => return Ok(None),
        Value::String(text) => text,
        other => {
            return Err(FieldError::new(
                field(),
                format!("must be a JSON text in a string, not {other}"),
            ));
        }
    };
    let held: Value = serde_json::from_str(text)
        .map_err(|e| FieldError::new(field(), format!("not valid JSON ({e}): {text:?}")))?;
    match held.get("name") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(name)) if name.is_empty() => Ok(None),
        Some(Value::String(name)) => Ok(Some(name.clone())),
        Some(other) => Err(FieldError::new(
            field(),
            format!("\"name\" must be a string, not {other}"),
        )),
    }
}

/// `KEY_PREFIX<plural>/`, with `<namespace>/` for a namespaced kind given one.
fn v3_prefix(kind: &KindInfo, namespace: Option<&str>) -> String {
    match namespace {
        Some(namespace) if kind.namespaced => {
            format!("{KEY_PREFIX}{}/{namespace}/", kind.plural)
        }
        _ => format!("{KEY_PREFIX}{}/", kind.plural),
    }
}

/// The namespace and the stored name of a v3 key of `kind`.
fn v3_parse<'k>(kind: &KindInfo, key: &'k str) -> Option<(Option<String>, &'k str)> {
    let rest = key
        .strip_prefix(KEY_PREFIX)?
        .strip_prefix(kind.plural)?
        .strip_prefix('/')?;
    let mut parts = rest.split('/');
    let (namespace, name) = if kind.namespaced {
        (Some(parts.next()?.to_owned()), parts.next()?)
    } else {
        (None, parts.next()?)
    };
    if parts.next().is_some() || name.is_empty() || namespace.as_deref().is_some_and(str::is_empty)
    {
        return None;
    }
    Some((namespace, name))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const GNP: KindInfo = KindInfo::cluster("GlobalNetworkPolicy", "globalnetworkpolicies", &[])
        .with_etcd_keys(&PolicyKeys);
    const NP: KindInfo =
        KindInfo::namespaced("NetworkPolicy", "networkpolicies", &[]).with_etcd_keys(&PolicyKeys);
    const PROFILE: KindInfo = KindInfo::cluster("Profile", "profiles", &[]);

    #[test]
    fn policy_keys_of_each_form() {
        let key =
            |info: &KindInfo, namespace, name, form| info.etcd.key(info, namespace, name, form);
        let gnps = "/calico/resources/v3/projectcalico.org/globalnetworkpolicies/";
        assert_eq!(
            key(&GNP, None, "deny", StoredForm::Current),
            Some(format!("{gnps}deny"))
        );
        assert_eq!(
            key(&GNP, None, "deny", StoredForm::Tiered),
            Some(format!("{gnps}default.deny"))
        );
        for name in ["security.block", "default.deny", "knp.default.web"] {
            assert_eq!(
                key(&GNP, None, name, StoredForm::Current),
                Some(format!("{gnps}{name}"))
            );
            assert_eq!(key(&GNP, None, name, StoredForm::Tiered), None, "{name}");
        }
        assert_eq!(
            key(&NP, Some("prod"), "web", StoredForm::Tiered),
            Some("/calico/resources/v3/projectcalico.org/networkpolicies/prod/default.web".into())
        );
        assert_eq!(
            NP.etcd.parse(
                &NP,
                "/calico/resources/v3/projectcalico.org/networkpolicies/prod/default.web"
            ),
            Some((Some("prod".into()), "default.web".into()))
        );
        assert_eq!(
            key(&PROFILE, None, "p", StoredForm::Current),
            Some("/calico/resources/v3/projectcalico.org/profiles/p".into())
        );
        assert_eq!(key(&PROFILE, None, "p", StoredForm::Tiered), None);
    }

    /// `metadata` with `annotation` (if any) as the name annotation, and `spec`.
    fn value(name: &str, annotation: Option<&str>, spec: Value) -> Value {
        let mut metadata = json!({ "name": name });
        if let Some(held) = annotation {
            metadata["annotations"] = json!({ POLICY_NAME_ANNOTATION: held });
        }
        json!({ "metadata": metadata, "spec": spec })
    }

    #[test]
    fn policy_names_read_from_each_form() {
        let read = |stored: &str, mut value: Value| {
            let name = PolicyKeys.read_value(stored, &mut value);
            (name, value)
        };
        let named = |name: &str| json!({ "name": name }).to_string();
        // Calico 3.32.
        let (name, left) = read("web", value("web", Some(&named("web")), json!({})));
        assert_eq!(name, Ok("web".into()));
        assert_eq!(left, json!({"metadata": {"name": "web"}, "spec": {}}));
        // Calico 3.29.4 to 3.31.
        let (name, _) = read(
            "default.web",
            value("default.web", Some(&named("web")), json!({})),
        );
        assert_eq!(name, Ok("web".into()));
        // Calico 3.28 to 3.29.3: no annotation, the default tier (named or not).
        for spec in [json!({}), json!({"tier": "default"}), json!({"tier": ""})] {
            let (name, _) = read("default.web", value("default.web", None, spec));
            assert_eq!(name, Ok("web".into()));
        }
        // Calico 3.32, a policy named `default.web` by the user.
        let (name, _) = read(
            "default.web",
            value("default.web", Some(&named("default.web")), json!({})),
        );
        assert_eq!(name, Ok("default.web".into()));
        // No annotation, another tier: the key's name.
        let (name, _) = read(
            "default.web",
            value("default.web", None, json!({"tier": "security"})),
        );
        assert_eq!(name, Ok("default.web".into()));
        // Names with a tier are the same in every form.
        let (name, _) = read(
            "security.block",
            value("security.block", None, json!({"tier": "security"})),
        );
        assert_eq!(name, Ok("security.block".into()));
        // The key decides: an annotation naming something else does not rename.
        let (name, _) = read("web", value("web", Some(&named("other")), json!({})));
        assert_eq!(name, Ok("web".into()));
        // Other annotations stay.
        let mut two = value("web", Some(&named("web")), json!({}));
        two["metadata"]["annotations"]["team"] = "a".into();
        let (_, left) = read("web", two);
        assert_eq!(left["metadata"]["annotations"], json!({"team": "a"}));
        // A broken annotation names its field.
        for broken in ["{name", "[1]x", r#"{"name": 3}"#] {
            let (name, _) = read("web", value("web", Some(broken), json!({})));
            let error = name.expect_err(broken);
            assert_eq!(
                error.field, "metadata.annotations.projectcalico.org/metadata",
                "{broken}"
            );
        }
        // Other kinds keep the key's name and their annotations.
        let mut profile = value("kns.a", Some(&named("x")), json!({}));
        let before = profile.clone();
        assert_eq!(
            PROFILE.etcd.read_value("kns.a", &mut profile),
            Ok("kns.a".into())
        );
        assert_eq!(profile, before);
    }

    #[test]
    fn policies_written_as_calico_writes_them() {
        let mut current = json!({
            "metadata": {"name": "web", "labels": {"app": "x"}},
            "spec": {"selector": "all()", "egress": [{"action": "Allow"}]},
        });
        PolicyKeys.write_value("web", StoredForm::Current, &mut current);
        assert_eq!(
            current,
            json!({
                "metadata": {
                    "name": "web",
                    "labels": {"app": "x", "projectcalico.org/tier": "default"},
                    "annotations": {"projectcalico.org/metadata": "{\"name\":\"web\"}"},
                },
                "spec": {"selector": "all()", "egress": [{"action": "Allow"}], "types": ["Egress"]},
            })
        );
        // What was written reads back under the name.
        assert_eq!(
            PolicyKeys.read_value("web", &mut current.clone()),
            Ok("web".into())
        );

        // The older form, where a policy is replaced in place: as Calico 3.29.4-3.31 wrote it.
        let mut tiered = json!({
            "metadata": {"name": "web", "annotations": {"note": "kept"}},
            "spec": {"ingress": [{"action": "Deny"}], "types": ["Ingress", "Egress"]},
        });
        PolicyKeys.write_value("web", StoredForm::Tiered, &mut tiered);
        assert_eq!(tiered["metadata"]["name"], "default.web");
        assert_eq!(
            tiered["metadata"]["annotations"],
            json!({"note": "kept", "projectcalico.org/metadata": "{\"name\":\"web\"}"})
        );
        assert_eq!(
            tiered["spec"]["types"],
            json!(["Ingress", "Egress"]),
            "kept"
        );
        assert_eq!(
            PolicyKeys.read_value("default.web", &mut tiered),
            Ok("web".into())
        );

        // A tiered name: the tier label is the spec's tier, replacing one that disagrees.
        let mut security = json!({
            "metadata": {"name": "security.block", "labels": {"projectcalico.org/tier": "x"}},
            "spec": {"tier": "security", "ingress": [{"action": "Deny"}], "egress": [{"action": "Deny"}]},
        });
        PolicyKeys.write_value("security.block", StoredForm::Current, &mut security);
        assert_eq!(security["metadata"]["name"], "security.block");
        assert_eq!(
            security["metadata"]["labels"],
            json!({"projectcalico.org/tier": "security"})
        );
        assert_eq!(security["spec"]["types"], json!(["Ingress", "Egress"]));

        // A policy without a spec is stored with one, as Calico's types serialise it.
        let mut empty = json!({"metadata": {"name": "empty"}});
        PolicyKeys.write_value("empty", StoredForm::Current, &mut empty);
        assert_eq!(empty["spec"], json!({"types": ["Ingress"]}));

        // Other kinds: the name only.
        let mut profile = json!({"metadata": {"name": "x"}, "spec": {}});
        PROFILE
            .etcd
            .write_value("p", StoredForm::Current, &mut profile);
        assert_eq!(profile, json!({"metadata": {"name": "p"}, "spec": {}}));
    }
}
