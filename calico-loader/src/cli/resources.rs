//! The calicoctl-style commands: `apply|create|replace|delete -f FILE|-`, `delete KIND NAME`
//! and `get KIND [NAME]`, against either datastore, with the datastore flags every command that
//! reads resources shares. Resources are validated by the same code the agent reads them with,
//! before anything is stored.

use std::{io::Read as _, path::PathBuf};

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use serde_json::{Value, json};

use crate::{
    agent::DEFAULT_DATASTORE_DIR,
    datastore::{
        DatastoreConfig, EtcdConfig, Kind, ResourceKey, Store, StoreError, StoredResource,
        WriteMode, WriteOutcome, WriteRequest, parse_documents, resources::DEFAULT_NAMESPACE,
    },
};

// The arguments of `apply`, `create` and `replace`.
#[derive(Args)]
pub struct FileArgs {
    #[arg(short = 'f', long = "filename", value_name = "FILE|-")]
    pub file: String,
    #[command(flatten)]
    pub datastore: DatastoreArgs,
}

impl FileArgs {
    /// `apply`, `create` or `replace`, as `mode` says: see [`write`].
    ///
    /// # Errors
    ///
    /// As [`write`].
    pub async fn write(&self, mode: WriteMode) -> anyhow::Result<()> {
        write(&self.datastore.config(), mode, &self.file).await
    }
}

// The arguments of `delete`.
#[derive(Args)]
pub struct DeleteArgs {
    #[arg(short = 'f', long = "filename", value_name = "FILE|-", conflicts_with_all = ["kind", "name"])]
    pub file: Option<String>,
    /// Kind (like globalnetworkpolicy, gnp, workloadendpoints).
    #[arg(required_unless_present = "file")]
    pub kind: Option<String>,
    #[arg(required_unless_present = "file")]
    pub name: Option<String>,
    /// Namespace, for namespaced kinds (default: default).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub datastore: DatastoreArgs,
}

impl DeleteArgs {
    /// `delete -f FILE` ([`delete_file`]) or `delete KIND NAME` ([`delete`]).
    ///
    /// # Errors
    ///
    /// As those, or neither a file nor a kind and a name given.
    pub async fn run(&self) -> anyhow::Result<()> {
        let config = self.datastore.config();
        match (&self.file, &self.kind, &self.name) {
            (Some(file), _, _) => delete_file(&config, file).await,
            (None, Some(kind), Some(name)) => {
                delete(&config, kind, name, self.namespace.as_deref()).await
            }
            _ => bail!("delete needs -f FILE, or KIND and NAME"),
        }
    }
}

// The arguments of `get`.
#[derive(Args)]
pub struct GetArgs {
    /// Kind (like globalnetworkpolicy, gnp, workloadendpoints).
    pub kind: String,
    pub name: Option<String>,
    /// Namespace, for namespaced kinds (default: default).
    #[arg(short = 'n', long, conflicts_with = "all_namespaces")]
    pub namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    #[arg(short = 'o', long = "output", default_value = "ps")]
    pub output: GetOutput,
    #[command(flatten)]
    pub datastore: DatastoreArgs,
}

impl GetArgs {
    /// `get`: see [`get`].
    ///
    /// # Errors
    ///
    /// As [`get`].
    pub async fn run(&self) -> anyhow::Result<()> {
        get(
            &self.datastore.config(),
            &self.kind,
            self.name.as_deref(),
            self.namespace.as_deref(),
            self.all_namespaces,
            self.output,
        )
        .await
    }
}

/// Which datastore: calicoctl's `DATASTORE_TYPE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DatastoreType {
    /// A directory of YAML/JSON files (`--datastore`).
    Local,
    /// etcd v3 (`--etcd-endpoints`), with Calico's key layout.
    Etcdv3,
}

/// The datastore settings, as flags or as calicoctl's environment variables.
#[derive(Args, Clone, Debug)]
pub struct DatastoreArgs {
    /// Datastore type: local (a directory) or etcdv3.
    #[arg(long, env = "DATASTORE_TYPE", default_value = "local")]
    pub datastore_type: DatastoreType,
    /// Directory of projectcalico.org/v3 resources (YAML/JSON), for the local datastore.
    #[arg(long, env = "CALICO_DATASTORE_DIR", default_value = DEFAULT_DATASTORE_DIR)]
    pub datastore: PathBuf,
    /// etcd endpoints, comma-separated (like http://127.0.0.1:2379).
    #[arg(long, env = "ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// CA certificate (PEM) for etcd's TLS.
    #[arg(long, env = "ETCD_CA_CERT_FILE")]
    pub etcd_ca_cert_file: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's TLS.
    #[arg(long, env = "ETCD_CERT_FILE")]
    pub etcd_cert_file: Option<PathBuf>,
    /// Client key (PEM) for etcd's TLS.
    #[arg(long, env = "ETCD_KEY_FILE")]
    pub etcd_key_file: Option<PathBuf>,
}

impl DatastoreArgs {
    /// The configuration these settings describe.
    pub fn config(&self) -> DatastoreConfig {
        match self.datastore_type {
            DatastoreType::Local => DatastoreConfig::Local(self.datastore.clone()),
            DatastoreType::Etcdv3 => DatastoreConfig::Etcd(EtcdConfig {
                endpoints: self
                    .etcd_endpoints
                    .iter()
                    .map(|e| e.trim().to_owned())
                    .filter(|e| !e.is_empty())
                    .collect(),
                ca_cert_file: self.etcd_ca_cert_file.clone(),
                cert_file: self.etcd_cert_file.clone(),
                key_file: self.etcd_key_file.clone(),
            }),
        }
    }
}

/// Output of `get`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum GetOutput {
    /// A table of the main fields.
    Ps,
    /// A table with more fields.
    Wide,
    Yaml,
    Json,
}

/// The kind a `get`/`delete` argument names: the kind (any case), its plural, or a short name
/// calicoctl accepts.
///
/// # Errors
///
/// Names no kind.
pub fn parse_kind(text: &str) -> anyhow::Result<Kind> {
    Kind::lookup(text).with_context(|| {
        let known: Vec<&str> = Kind::ALL.iter().map(|k| k.plural()).collect();
        format!(
            "unknown resource kind {text:?} (known: {})",
            known.join(", ")
        )
    })
}

/// Reads `-f FILE` (`-` for stdin): the text and its label for errors.
fn read_input(file: &str) -> anyhow::Result<(String, String)> {
    if file == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading resources from stdin")?;
        Ok(("stdin".into(), text))
    } else {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
        Ok((file.to_owned(), text))
    }
}

/// The resources of `-f FILE`, validated; every problem is reported and nothing else done if
/// any is invalid.
fn read_requests(file: &str, mode: WriteMode) -> anyhow::Result<Vec<WriteRequest>> {
    let (label, text) = read_input(file)?;
    let documents = parse_documents(&label, &text).map_err(StoreError::Invalid)?;
    if documents.is_empty() {
        bail!("{label}: no resources found");
    }
    Ok(documents
        .into_iter()
        .map(|d| WriteRequest {
            mode,
            resource: d.resource,
            raw: d.raw,
        })
        .collect())
}

/// `apply`, `create` or `replace -f FILE`: all resources of the file in one transaction.
///
/// # Errors
///
/// An invalid resource, a create of one that exists, a replace of one that does not, a stale
/// `resourceVersion`, or the datastore failing: then nothing was stored.
pub async fn write(config: &DatastoreConfig, mode: WriteMode, file: &str) -> anyhow::Result<()> {
    let requests = read_requests(file, mode)?;
    let mut store = Store::open(config).await?;
    check_pool_overlaps(&mut store, &requests).await?;
    let outcomes = store.write(&requests).await?;
    for (request, outcome) in requests.iter().zip(outcomes) {
        let verb = match (mode, outcome) {
            (WriteMode::Apply, _) => "applied",
            (_, WriteOutcome::Created) => "created",
            (_, WriteOutcome::Replaced) => "replaced",
        };
        println!("{verb} {}", request.resource.key());
    }
    println!(
        "Successfully {} {} resource(s)",
        match mode {
            WriteMode::Apply => "applied",
            WriteMode::Create => "created",
            WriteMode::Replace => "replaced",
        },
        requests.len()
    );
    Ok(())
}

/// Refuses IP pools that overlap another pool (stored, or in the same file), as libcalico-go
/// does when a pool is written.
///
/// # Errors
///
/// The first overlap found, naming both pools.
async fn check_pool_overlaps(store: &mut Store, requests: &[WriteRequest]) -> anyhow::Result<()> {
    use crate::datastore::resources::IpPool;
    let new: Vec<&IpPool> = requests
        .iter()
        .filter_map(|r| r.resource.typed::<IpPool>())
        .collect();
    if new.is_empty() {
        return Ok(());
    }
    let (stored, _) = store.list(Kind::IpPool, None).await?;
    let mut pools: Vec<IpPool> = stored
        .iter()
        .filter_map(|s| s.resource.typed::<IpPool>().cloned())
        .filter(|p| !new.iter().any(|n| n.name() == p.name()))
        .collect();
    for pool in new {
        let cidr = pool.spec.cidr;
        if let Some(other) = pools.iter().find(|p| {
            let o = p.spec.cidr;
            o.contains(&cidr.network()) || cidr.contains(&o.network())
        }) {
            bail!(
                "IPPool {}: spec.cidr: {cidr} overlaps IPPool {} ({}); nothing was stored",
                pool.name(),
                other.name(),
                other.spec.cidr
            );
        }
        pools.push(pool.clone());
    }
    Ok(())
}

/// `delete -f FILE`: each resource of the file (at its `resourceVersion`, if given).
///
/// # Errors
///
/// An invalid file, a resource that does not exist or is at another version, or the datastore
/// failing. Resources before the failing one are deleted.
pub async fn delete_file(config: &DatastoreConfig, file: &str) -> anyhow::Result<()> {
    let requests = read_requests(file, WriteMode::Replace)?;
    let mut store = Store::open(config).await?;
    for request in &requests {
        let key = request.resource.key();
        store
            .delete(&key, request.expected_version().as_deref())
            .await?;
        println!("deleted {key}");
    }
    Ok(())
}

/// `delete KIND NAME [-n NS]`.
///
/// # Errors
///
/// Unknown kind, no such resource, or the datastore failing.
pub async fn delete(
    config: &DatastoreConfig,
    kind: &str,
    name: &str,
    namespace: Option<&str>,
) -> anyhow::Result<()> {
    let kind = parse_kind(kind)?;
    let key = ResourceKey {
        kind,
        namespace: kind
            .is_namespaced()
            .then(|| namespace.unwrap_or(DEFAULT_NAMESPACE).to_owned()),
        name: name.to_owned(),
    };
    let mut store = Store::open(config).await?;
    store.delete(&key, None).await?;
    println!("deleted {key}");
    Ok(())
}

/// `get KIND [NAME] [-n NS | -A] [-o ps|wide|yaml|json]`, printed on stdout.
///
/// # Errors
///
/// Unknown kind, a named resource that does not exist, or the datastore failing.
pub async fn get(
    config: &DatastoreConfig,
    kind: &str,
    name: Option<&str>,
    namespace: Option<&str>,
    all_namespaces: bool,
    output: GetOutput,
) -> anyhow::Result<()> {
    let kind = parse_kind(kind)?;
    let namespace = if kind.is_namespaced() && !all_namespaces {
        Some(namespace.unwrap_or(DEFAULT_NAMESPACE))
    } else {
        None
    };
    let mut store = Store::open(config).await?;
    let resources = match name {
        Some(name) => {
            let key = ResourceKey {
                kind,
                namespace: kind
                    .is_namespaced()
                    .then(|| namespace.unwrap_or(DEFAULT_NAMESPACE).to_owned()),
                name: name.to_owned(),
            };
            match store.get(&key).await? {
                Some(stored) => vec![stored],
                None => return Err(StoreError::NotFound { key }.into()),
            }
        }
        None => {
            let (resources, errors) = store.list(kind, namespace).await?;
            for e in errors {
                eprintln!("warning: not shown: {e}");
            }
            resources
        }
    };
    print!(
        "{}",
        render(kind, &resources, name.is_some(), all_namespaces, output)?
    );
    Ok(())
}

/// The text `get` prints.
///
/// # Errors
///
/// YAML or JSON encoding failing.
pub fn render(
    kind: Kind,
    resources: &[StoredResource],
    single: bool,
    all_namespaces: bool,
    output: GetOutput,
) -> anyhow::Result<String> {
    let document = || -> Value {
        if single && resources.len() == 1 {
            resources[0].value.clone()
        } else {
            json!({
                "apiVersion": crate::datastore::resources::API_VERSION,
                "kind": format!("{kind}List"),
                "metadata": {},
                "items": resources.iter().map(|r| r.value.clone()).collect::<Vec<_>>(),
            })
        }
    };
    Ok(match output {
        GetOutput::Yaml => serde_yaml::to_string(&document())?,
        GetOutput::Json => format!("{}\n", serde_json::to_string_pretty(&document())?),
        GetOutput::Ps | GetOutput::Wide => {
            table(kind, resources, all_namespaces, output == GetOutput::Wide)
        }
    })
}

fn text_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, p| v.get(*p))
}

fn string_at(value: &Value, path: &[&str]) -> String {
    match text_at(value, path) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join(","),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// A table in calicoctl's style: upper-case headers, columns padded with three spaces.
fn table(kind: Kind, resources: &[StoredResource], all_namespaces: bool, wide: bool) -> String {
    let mut headers: Vec<&str> = Vec::new();
    if all_namespaces && kind.is_namespaced() {
        headers.push("NAMESPACE");
    }
    headers.push(if kind == Kind::WorkloadEndpoint {
        "WORKLOAD"
    } else {
        "NAME"
    });
    let columns: Vec<(&str, Vec<&str>)> = match kind {
        Kind::WorkloadEndpoint => {
            let mut c = vec![
                ("NODE", vec!["spec", "node"]),
                ("NETWORKS", vec!["spec", "ipNetworks"]),
                ("INTERFACE", vec!["spec", "interfaceName"]),
            ];
            if wide {
                c.push(("PROFILES", vec!["spec", "profiles"]));
            }
            c
        }
        Kind::NetworkPolicy | Kind::GlobalNetworkPolicy => {
            let mut c = vec![("TIER", vec!["spec", "tier"])];
            if wide {
                c.push(("ORDER", vec!["spec", "order"]));
                c.push(("SELECTOR", vec!["spec", "selector"]));
            }
            c
        }
        Kind::Tier => vec![("ORDER", vec!["spec", "order"])],
        Kind::Profile if wide => vec![("LABELS", vec!["spec", "labelsToApply"])],
        Kind::NetworkSet | Kind::GlobalNetworkSet if wide => vec![("NETS", vec!["spec", "nets"])],
        _ => Vec::new(),
    };
    headers.extend(columns.iter().map(|(h, _)| *h));
    let mut rows: Vec<Vec<String>> = vec![headers.iter().map(|h| (*h).to_owned()).collect()];
    for r in resources {
        let mut row = Vec::new();
        if all_namespaces && kind.is_namespaced() {
            row.push(r.key.namespace.clone().unwrap_or_default());
        }
        row.push(r.key.name.clone());
        for (header, path) in &columns {
            let mut cell = string_at(&r.value, path);
            if *header == "TIER" && cell.is_empty() {
                cell = "default".into();
            }
            row.push(cell);
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_by_any_name() {
        assert_eq!(parse_kind("gnp").ok(), Some(Kind::GlobalNetworkPolicy));
        assert_eq!(
            parse_kind("GlobalNetworkPolicies").ok(),
            Some(Kind::GlobalNetworkPolicy)
        );
        assert_eq!(
            parse_kind("workloadendpoint").ok(),
            Some(Kind::WorkloadEndpoint)
        );
        assert_eq!(parse_kind("tiers").ok(), Some(Kind::Tier));
        assert_eq!(parse_kind("ippools").ok(), Some(Kind::IpPool));
        let e = parse_kind("widgets").expect_err("unknown");
        assert!(e.to_string().contains("unknown resource kind \"widgets\""));
    }

    #[test]
    fn wide_tables_of_sets_show_their_nets_as_calicoctl_does() {
        let text = "apiVersion: projectcalico.org/v3\nkind: NetworkSet\nmetadata: {name: partners, namespace: prod}\nspec: {nets: [198.19.0.0/16, \"2001:db8::/48\"]}\n";
        let resource = crate::datastore::parse_file("sets.yaml", text)
            .expect("valid")
            .remove(0);
        let value: Value = serde_yaml::from_str(text).expect("YAML");
        let stored = StoredResource {
            key: resource.key(),
            resource,
            value,
            version: "1".into(),
        };
        let wide = table(Kind::NetworkSet, std::slice::from_ref(&stored), true, true);
        assert_eq!(
            wide,
            "NAMESPACE   NAME       NETS\nprod        partners   198.19.0.0/16,2001:db8::/48\n"
        );
        let narrow = table(Kind::NetworkSet, &[stored], false, false);
        assert_eq!(narrow, "NAME\npartners\n");
    }
}
