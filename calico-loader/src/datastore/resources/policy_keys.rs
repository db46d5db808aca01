//! How the policy kinds are keyed in etcd ([`PolicyKeys`]): Calico 3.32's form, and the
//! tiered form of Calico 3.28 to 3.31, which is still read.

use serde_json::{Map, Value};

use super::{
    fields::FieldError,
    kind_info::{EtcdKeys, KindInfo, StoredForm, v3_parse, v3_prefix},
    policy::DEFAULT_TIER,
};

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
