//! The local datastore: a directory of YAML (or JSON) files, re-read on demand, and a watch that
//! says when it changed.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    ffi::OsStr,
    io,
    path::{Path, PathBuf},
    sync::mpsc as std_mpsc,
    thread,
    time::{Duration, Instant},
};

use notify::{
    EventKind, RecursiveMode, Watcher as _,
    event::{AccessKind, AccessMode},
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{
    error::{DatastoreError, ErrorKind},
    parse::{Located, parse_file_located},
    resources::{Resource, ResourceKey},
    snapshot::{IpamObjects, Snapshot, SyncResult},
};

/// A directory of `projectcalico.org/v3` resources.
///
/// Reads every `*.yaml`, `*.yml` and `*.json` file under the directory, recursively (following
/// symbolic links, as in a mounted Kubernetes ConfigMap), skipping hidden names (starting with
/// `.`) and editor leftovers (ending with `~`, `.swp`, `.tmp`). Files are named in errors by
/// their path relative to the directory.
#[derive(Debug)]
pub struct LocalDatastore {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    /// Errors that are not about one file's contents (directory listing, duplicates across
    /// files), as last reported.
    other_errors: BTreeSet<DatastoreError>,
    snapshot: Snapshot,
    /// The duplicates the last merge of the files' resources found, until a file changes.
    merged: Option<Vec<DatastoreError>>,
}

/// What is known of one file.
#[derive(Debug, Default)]
struct FileState {
    /// The contents last read, or `None` if they could not be read.
    contents: Option<String>,
    /// The resources of the last version that parsed, if any.
    good: Option<Vec<Located>>,
    /// Problems with the version last read.
    errors: Vec<DatastoreError>,
}

impl LocalDatastore {
    /// A datastore over `dir`. Nothing is read until [`sync`](Self::sync).
    pub fn new(dir: impl AsRef<Path>) -> Self {
        Self {
            dir: dir.as_ref().to_path_buf(),
            files: BTreeMap::new(),
            other_errors: BTreeSet::new(),
            snapshot: Snapshot::default(),
            merged: None,
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The snapshot of the last sync.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Re-reads the directory: returns the resources now in force and the problems found.
    ///
    /// A file that fails to read, parse or validate keeps its last good version in force (or
    /// nothing, if it never was good); a removed file takes its resources away; unchanged
    /// files are not parsed again. A resource defined in two files is taken from the file whose
    /// path sorts first, and reported. New problems are logged once; [`SyncResult::errors`]
    /// holds all current ones.
    pub fn sync(&mut self) -> SyncResult {
        let mut new_errors = Vec::new();
        let mut other_errors = Vec::new();

        let listing = list_files(&self.dir);
        other_errors.extend(
            listing
                .errors
                .iter()
                .map(|(label, e)| DatastoreError::file(label, ErrorKind::Io, e)),
        );

        // Files gone: unless their directory could not be listed, their resources go too.
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|path| {
                !listing.files.contains(*path)
                    && !listing.unlisted.iter().any(|dir| path.starts_with(dir))
            })
            .cloned()
            .collect();
        let mut changed = !gone.is_empty();
        for path in gone {
            info!(file = %path.display(), "datastore file removed");
            self.files.remove(&path);
        }

        for path in &listing.files {
            let (errors, file_changed) = self.refresh(path);
            new_errors.extend(errors);
            changed |= file_changed;
        }
        // Resources are merged again only when a file's version in force may have changed:
        // otherwise the snapshot (shared, not copied) and its duplicates stay.
        if changed || self.merged.is_none() {
            let (resources, duplicates) = self.merge();
            self.snapshot = resources.into_values().collect();
            self.merged = Some(duplicates);
        }
        other_errors.extend(self.merged.iter().flatten().cloned());

        let other: BTreeSet<DatastoreError> = other_errors.into_iter().collect();
        new_errors.extend(other.difference(&self.other_errors).cloned());
        self.other_errors = other;
        for e in &new_errors {
            warn!("{e}");
        }

        let mut errors: Vec<DatastoreError> = self
            .files
            .values()
            .flat_map(|state| state.errors.iter().cloned())
            .chain(self.other_errors.iter().cloned())
            .collect();
        errors.sort();
        new_errors.sort();

        debug!(
            resources = self.snapshot.len(),
            errors = errors.len(),
            "datastore synced"
        );
        SyncResult {
            snapshot: self.snapshot.clone(),
            errors,
            new_errors,
            ipam: read_ipam_objects(&self.dir),
            complete: true,
        }
    }

    /// Reads one file again and parses it if it changed. Returns the problems that are new,
    /// and whether the file's resources in force may have changed (it went, or a new version
    /// was read).
    fn refresh(&mut self, path: &Path) -> (Vec<DatastoreError>, bool) {
        let label = path.display().to_string();
        let text = match read_text(&self.dir.join(path)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Removed since the listing.
                let removed = self.files.remove(path).is_some();
                if removed {
                    info!(file = %label, "datastore file removed");
                }
                return (Vec::new(), removed);
            }
            result => result,
        };
        let state = self.files.entry(path.to_path_buf()).or_default();
        let text = match text {
            Ok(text) => text,
            Err(e) => {
                let error =
                    DatastoreError::file(&label, ErrorKind::Io, format!("cannot read: {e}"));
                let new = if state.errors == [error.clone()] {
                    Vec::new()
                } else {
                    vec![error.clone()]
                };
                state.contents = None;
                state.errors = vec![error];
                return (new, false);
            }
        };
        if state.contents.as_ref() == Some(&text) {
            return (Vec::new(), false);
        }
        let parsed = parse_file_located(&label, &text);
        state.contents = Some(text);
        match parsed {
            Ok(resources) => {
                info!(file = %label, resources = resources.len(), "datastore file loaded");
                state.good = Some(resources);
                state.errors.clear();
                (Vec::new(), true)
            }
            Err(errors) => {
                if state.good.is_some() {
                    warn!(file = %label, "datastore file invalid; its last good version stays in force");
                }
                let new = errors
                    .iter()
                    .filter(|e| !state.errors.contains(e))
                    .cloned()
                    .collect();
                state.errors = errors;
                (new, false)
            }
        }
    }

    /// The resources of all files, taken in path order: the first definition of a key wins,
    /// later ones are reported.
    fn merge(&self) -> (BTreeMap<ResourceKey, Resource>, Vec<DatastoreError>) {
        let mut resources = BTreeMap::new();
        let mut origins: BTreeMap<ResourceKey, (&Path, usize)> = BTreeMap::new();
        let mut duplicates = Vec::new();
        for (path, state) in &self.files {
            for located in state.good.iter().flatten() {
                let key = located.resource.key();
                if let Some((first, document)) = origins.get(&key) {
                    duplicates.push(DatastoreError {
                        file: path.display().to_string(),
                        document: Some(located.document),
                        line: Some(located.line),
                        column: None,
                        resource: Some(key.to_string()),
                        field: None,
                        kind: ErrorKind::Duplicate,
                        message: format!(
                            "also defined in {} (document {document}); that definition is used",
                            first.display()
                        ),
                    });
                    continue;
                }
                origins.insert(key.clone(), (path, located.document));
                resources.insert(key, located.resource.clone());
            }
        }
        (resources, duplicates)
    }
}

pub(super) fn read_text(path: &Path) -> io::Result<String> {
    let bytes = std::fs::read(path)?;
    String::from_utf8(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// Whether a file or directory name is one the datastore skips: hidden, or an editor's
/// leftover.
fn is_ignored_name(name: &OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return true;
    };
    name.starts_with('.')
        || name.ends_with('~')
        || name.ends_with(".swp")
        || name.ends_with(".swx")
        || name.ends_with(".tmp")
        || (name.starts_with('#') && name.ends_with('#'))
}

/// Whether a file name is one of the datastore's files.
fn is_resource_file(name: &OsStr) -> bool {
    if is_ignored_name(name) {
        return false;
    }
    let extension = Path::new(name)
        .extension()
        .and_then(OsStr::to_str)
        .map(str::to_ascii_lowercase);
    matches!(extension.as_deref(), Some("yaml" | "yml" | "json"))
}

/// The top-level directory that holds IPAM's objects (blocks, affinities, handles, the IPAM
/// configuration) under the datastore directory, at their etcd keys' paths without `/calico/`
/// (`ipam/v2/assignment/ipv4/block/198.18.0.0-26`). It is never read for resources. A sync
/// reads its block affinities and blocks as they are ([`IpamObjects`]), and only their changes
/// wake the agent (not those of handles, of the configuration or of IPAM's lock file).
pub const IPAM_DIR: &str = "ipam";

/// The directory (relative to the datastore's) that holds the keys under `prefix`.
fn ipam_key_dir(prefix: &str) -> &str {
    prefix.trim_start_matches("/calico/").trim_end_matches('/')
}

/// The block affinities and blocks under `root`'s IPAM directory, by etcd key. Hidden files
/// (IPAM's temporary files) are skipped; a file that cannot be read is left out (IPAM's own
/// commands report such problems).
fn read_ipam_objects(root: &Path) -> IpamObjects {
    let mut objects = IpamObjects::default();
    for prefix in IpamObjects::PREFIXES {
        let mut pending = vec![PathBuf::from(ipam_key_dir(prefix))];
        while let Some(relative) = pending.pop() {
            let Ok(entries) = std::fs::read_dir(root.join(&relative)) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                if is_ignored_name(&name) {
                    continue;
                }
                let path = relative.join(&name);
                match entry.file_type() {
                    Ok(kind) if kind.is_dir() => pending.push(path),
                    Ok(kind) if kind.is_file() => match std::fs::read(entry.path()) {
                        Ok(value) => {
                            objects
                                .values
                                .insert(format!("/calico/{}", path.display()), value);
                        }
                        Err(e) => debug!(file = %path.display(), "IPAM file not read: {e}"),
                    },
                    _ => {}
                }
            }
        }
    }
    objects
}

/// The files under the datastore directory.
pub(super) struct Listing {
    /// Paths relative to the directory, sorted.
    pub files: BTreeSet<PathBuf>,
    /// Directories (relative) that could not be read: what was there is not known.
    unlisted: Vec<PathBuf>,
    /// (label, problem) for each directory that could not be read.
    pub errors: Vec<(String, String)>,
}

pub(super) fn list_files(root: &Path) -> Listing {
    let mut listing = Listing {
        files: BTreeSet::new(),
        unlisted: Vec::new(),
        errors: Vec::new(),
    };
    let mut visited = HashSet::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let dir = root.join(&relative);
        // Symbolic links may loop: visit each real directory once.
        if let Ok(real) = dir.canonicalize()
            && !visited.insert(real)
        {
            continue;
        }
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) => {
                let label = if relative.as_os_str().is_empty() {
                    root.display().to_string()
                } else {
                    relative.display().to_string()
                };
                listing
                    .errors
                    .push((label, format!("cannot read directory: {e}")));
                listing.unlisted.push(relative);
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    listing.errors.push((
                        dir.display().to_string(),
                        format!("cannot read directory: {e}"),
                    ));
                    listing.unlisted.push(relative.clone());
                    continue;
                }
            };
            let name = entry.file_name();
            if is_ignored_name(&name) {
                continue;
            }
            let path = relative.join(&name);
            if path.as_os_str() == IPAM_DIR {
                // IPAM's objects, not resources (see IPAM_DIR).
                continue;
            }
            // Follows symbolic links; a dangling one is skipped.
            let Ok(metadata) = std::fs::metadata(entry.path()) else {
                continue;
            };
            if metadata.is_dir() {
                pending.push(path);
            } else if metadata.is_file() && is_resource_file(&name) {
                listing.files.insert(path);
            }
        }
    }
    listing
}

// ---------------------------------------------------------------------------------------------
// Watch

/// How long the directory must be quiet before a change is notified.
const DEBOUNCE: Duration = Duration::from_millis(150);
/// Longest a change waits to be notified while the directory keeps changing.
const MAX_DELAY: Duration = Duration::from_secs(1);

/// Why the directory cannot be watched.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The path is not an existing directory.
    #[error("datastore directory {} does not exist or is not a directory", .0.display())]
    NotADirectory(PathBuf),
    /// inotify refused.
    #[error("cannot watch datastore directory {}: {source}", .path.display())]
    Notify {
        /// The directory.
        path: PathBuf,
        /// What notify reported.
        source: notify::Error,
    },
}

/// Change notifications for a datastore directory, debounced: one `()` per burst of changes.
/// Dropping it stops the watch.
pub struct DatastoreWatch {
    changes: mpsc::Receiver<()>,
    _watcher: notify::RecommendedWatcher,
}

impl DatastoreWatch {
    /// Waits for the next change; `None` if the watch has ended. Cancel-safe, for `select!`.
    pub async fn recv(&mut self) -> Option<()> {
        self.changes.recv().await
    }

    /// Takes a change already notified, without waiting.
    pub fn try_recv(&mut self) -> Option<()> {
        self.changes.try_recv().ok()
    }
}

impl std::fmt::Debug for DatastoreWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatastoreWatch").finish_non_exhaustive()
    }
}

/// Watches `dir` recursively (inotify) and notifies, about 150 ms after things settle, that
/// something in it changed, so the caller can [`sync`](LocalDatastore::sync). Files written in
/// place, created, removed or renamed over (as editors save) all count; reads do not. Under
/// [`IPAM_DIR`], only block affinities and blocks count.
///
/// Works without a Tokio runtime (a thread debounces), though [`DatastoreWatch::recv`] is
/// async.
///
/// # Errors
///
/// [`WatchError::NotADirectory`] if `dir` is not an existing directory, and
/// [`WatchError::Notify`] if inotify refuses (for example, too many watches).
pub fn watch(dir: impl AsRef<Path>) -> Result<DatastoreWatch, WatchError> {
    let dir = dir.as_ref();
    if !dir.is_dir() {
        return Err(WatchError::NotADirectory(dir.to_path_buf()));
    }
    let (raw_tx, raw_rx) = std_mpsc::channel::<()>();
    let ipam_dir = dir.join(IPAM_DIR);
    let followed: Vec<PathBuf> = IpamObjects::PREFIXES
        .iter()
        .map(|prefix| dir.join(ipam_key_dir(prefix)))
        .collect();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = match event {
            Ok(event) => {
                is_relevant(&event)
                    && (!only_under(&event, &ipam_dir)
                        || event
                            .paths
                            .iter()
                            .any(|p| followed.iter().any(|f| p.starts_with(f))))
            }
            Err(e) => {
                // Lost events (queue overflow...): a sync puts things right.
                warn!("datastore watch: {e}");
                true
            }
        };
        if relevant {
            let _ = raw_tx.send(());
        }
    })
    .map_err(|source| WatchError::Notify {
        path: dir.to_path_buf(),
        source,
    })?;
    watcher
        .watch(dir, RecursiveMode::Recursive)
        .map_err(|source| WatchError::Notify {
            path: dir.to_path_buf(),
            source,
        })?;

    let (tx, rx) = mpsc::channel(1);
    thread::Builder::new()
        .name("datastore-watch".into())
        .spawn(move || debounce(&raw_rx, &tx))
        .map_err(|e| WatchError::Notify {
            path: dir.to_path_buf(),
            source: notify::Error::io(e),
        })?;
    Ok(DatastoreWatch {
        changes: rx,
        _watcher: watcher,
    })
}

/// Whether an event can change what the datastore reads: anything but opening and reading
/// files (as `sync` does). Events about hidden names count too: a Kubernetes ConfigMap mount
/// changes by swapping its `..data` symbolic link.
fn is_relevant(event: &notify::Event) -> bool {
    event.need_rescan()
        || !matches!(
            event.kind,
            EventKind::Access(kind) if kind != AccessKind::Close(AccessMode::Write)
        )
}

/// Whether every path of `event` is under `dir` (and it names some).
fn only_under(event: &notify::Event, dir: &Path) -> bool {
    !event.need_rescan()
        && !event.paths.is_empty()
        && event.paths.iter().all(|p| p.starts_with(dir))
}

/// Forwards one notification per burst of raw events: after `DEBOUNCE` of quiet, or
/// `MAX_DELAY` after the burst began. Ends when the watcher or the receiver goes.
fn debounce(raw: &std_mpsc::Receiver<()>, tx: &mpsc::Sender<()>) {
    while raw.recv().is_ok() {
        let first = Instant::now();
        loop {
            let left = MAX_DELAY.saturating_sub(first.elapsed());
            if left.is_zero() {
                break;
            }
            match raw.recv_timeout(DEBOUNCE.min(left)) {
                Ok(()) => {}
                Err(std_mpsc::RecvTimeoutError::Timeout) => break,
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
        match tx.try_send(()) {
            // Full: a notification is already pending, which covers this one.
            Ok(()) | Err(mpsc::error::TrySendError::Full(())) => {}
            Err(mpsc::error::TrySendError::Closed(())) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::datastore::resources::Kind;

    fn wep(name: &str, ip: &str) -> String {
        format!(
            "apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\nmetadata: {{name: {name}}}\n\
             spec: {{node: node1, interfaceName: cali-{name}, ipNetworks: [{ip}]}}\n"
        )
    }

    fn names(snapshot: &Snapshot) -> Vec<String> {
        snapshot.iter().map(|(key, _)| key.to_string()).collect()
    }

    fn write(dir: &Path, path: &str, text: &str) {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(path, text).unwrap();
    }

    #[test]
    fn ipam_objects_are_not_resources() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "a.yaml", &wep("a", "198.18.0.1"));
        // IPAM's files, even one named like a resource file, are not parsed.
        write(
            d,
            "ipam/v2/handle/h1",
            r#"{"block":{"198.18.0.0/26":1},"deleted":false}"#,
        );
        write(d, "ipam/v2/config.json", "not: [a resource");
        // Block affinities and blocks are carried as they are, by etcd key; a value that does
        // not read is IPAM's business, not the datastore's.
        write(
            d,
            "ipam/v2/host/node-1/ipv4/block/198.18.0.0-26",
            r#"{"state":"confirmed","deleted":false}"#,
        );
        write(
            d,
            "ipam/v2/assignment/ipv4/block/198.18.0.0-26",
            "{not json",
        );
        write(d, "ipam/v2/assignment/ipv4/block/.198.18.0.64-26.tmp", "{}");
        let mut store = LocalDatastore::new(d);
        let result = store.sync();
        assert!(result.errors.is_empty(), "{:?}", result.errors);
        assert_eq!(names(&result.snapshot), ["WorkloadEndpoint default/a"]);
        assert!(result.complete);
        let keys: Vec<&str> = result.ipam.values.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "/calico/ipam/v2/assignment/ipv4/block/198.18.0.0-26",
                "/calico/ipam/v2/host/node-1/ipv4/block/198.18.0.0-26",
            ]
        );
        assert_eq!(
            result.ipam.values["/calico/ipam/v2/assignment/ipv4/block/198.18.0.0-26"],
            b"{not json"
        );
    }

    #[tokio::test]
    async fn watch_wakes_for_block_affinities_and_blocks_only_under_ipam() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "ipam/.lock", "");
        write(d, "ipam/v2/handle/h0", "{}");
        let mut w = watch(d).unwrap();
        assert!(!changed_within(&mut w, Duration::from_millis(400)).await);

        for (path, wakes) in [
            ("ipam/v2/handle/h1", false),
            ("ipam/.lock", false),
            ("ipam/v2/config", false),
            ("ipam/v2/host/node-1/ipv4/block/198.18.0.0-26", true),
            ("ipam/v2/assignment/ipv6/block/2001:db8::-122", true),
        ] {
            write(d, path, "{}");
            // A wake-up may be late on a busy machine; a write that must not wake gets 600 ms.
            let within = Duration::from_millis(if wakes { 3000 } else { 600 });
            assert_eq!(changed_within(&mut w, within).await, wakes, "{path}");
        }
        fs::remove_file(d.join("ipam/v2/host/node-1/ipv4/block/198.18.0.0-26")).unwrap();
        assert!(
            changed_within(&mut w, Duration::from_secs(2)).await,
            "a removed affinity"
        );
    }

    #[test]
    fn reads_resource_files_recursively_and_skips_others() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "a.yaml", &wep("a", "198.18.0.1"));
        write(d, "sub/b.yml", &wep("b", "198.18.0.2"));
        write(
            d,
            "sub/deeper/c.JSON",
            r#"{"apiVersion": "projectcalico.org/v3", "kind": "Profile", "metadata": {"name": "c"}}"#,
        );
        // None of these is read (they would not even parse).
        for skipped in [
            ".hidden.yaml",
            "a.yaml~",
            "a.yaml.swp",
            ".a.yaml.swp",
            "a.yaml.tmp",
            "#a.yaml#",
            "notes.txt",
            ".git/x.yaml",
        ] {
            write(d, skipped, "not: [valid");
        }
        let mut ds = LocalDatastore::new(d);
        let sync = ds.sync();
        assert_eq!(sync.errors, vec![]);
        assert_eq!(
            names(&sync.snapshot),
            [
                "WorkloadEndpoint default/a",
                "WorkloadEndpoint default/b",
                "Profile c"
            ]
        );
        assert_eq!(ds.snapshot(), &sync.snapshot);
        let weps: Vec<_> = sync
            .snapshot
            .workload_endpoints()
            .map(|w| (w.namespace(), w.name()))
            .collect();
        assert_eq!(weps, [("default", "a"), ("default", "b")]);
        assert_eq!(sync.snapshot.of_kind(Kind::Profile).count(), 1);
        assert_eq!(
            sync.snapshot
                .workload_endpoint("default", "b")
                .map(|w| w.spec.interface_name.as_str()),
            Some("cali-b")
        );
        assert!(sync.snapshot.workload_endpoint("other", "b").is_none());
    }

    #[test]
    fn a_broken_file_keeps_its_last_good_version() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(
            d,
            "web.yaml",
            &format!("{}---\n{}", wep("a", "198.18.0.1"), wep("b", "198.18.0.2")),
        );
        write(d, "other.yaml", &wep("c", "198.18.0.3"));
        let mut ds = LocalDatastore::new(d);
        let first = ds.sync();
        assert_eq!(first.errors, vec![]);
        assert_eq!(first.snapshot.len(), 3);

        // Broken: a bad address in one document. Nothing of the file changes.
        write(
            d,
            "web.yaml",
            &format!(
                "{}---\n{}",
                wep("a", "198.18.0.1"),
                wep("b", "198.18.0.300")
            ),
        );
        write(d, "other.yaml", &wep("c", "198.18.0.33"));
        let broken = ds.sync();
        assert_eq!(broken.errors.len(), 1, "{:#?}", broken.errors);
        let e = &broken.errors[0];
        assert_eq!(
            (e.file.as_str(), e.document, e.field.as_deref()),
            ("web.yaml", Some(2), Some("spec.ipNetworks[0]"))
        );
        assert_eq!(broken.new_errors, broken.errors);
        let b = broken.snapshot.workload_endpoint("default", "b").unwrap();
        assert_eq!(
            b.spec.ip_networks,
            vec!["198.18.0.2/32".parse::<ipnet::IpNet>().unwrap()]
        );
        // ...while other files are read as usual.
        let c = broken.snapshot.workload_endpoint("default", "c").unwrap();
        assert_eq!(
            c.spec.ip_networks,
            vec!["198.18.0.33/32".parse::<ipnet::IpNet>().unwrap()]
        );

        // Still broken: still reported, but not new.
        let again = ds.sync();
        assert_eq!(again.errors, broken.errors);
        assert_eq!(again.new_errors, vec![]);
        assert_eq!(again.snapshot, broken.snapshot);

        // Not YAML at all: same.
        write(d, "web.yaml", "apiVersion: [");
        let garbage = ds.sync();
        assert_eq!(garbage.errors.len(), 1);
        assert_eq!(garbage.errors[0].kind, ErrorKind::Syntax);
        assert_eq!(garbage.snapshot, broken.snapshot);

        // Fixed: the new version is used.
        write(d, "web.yaml", &wep("a", "198.18.0.11"));
        let fixed = ds.sync();
        assert_eq!(fixed.errors, vec![]);
        assert_eq!(
            names(&fixed.snapshot),
            ["WorkloadEndpoint default/a", "WorkloadEndpoint default/c"]
        );

        // Removed: its resources go.
        fs::remove_file(d.join("web.yaml")).unwrap();
        let removed = ds.sync();
        assert_eq!(removed.errors, vec![]);
        assert_eq!(names(&removed.snapshot), ["WorkloadEndpoint default/c"]);
    }

    #[test]
    fn a_file_that_never_parsed_contributes_nothing_until_fixed() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(
            d,
            "new.yaml",
            "apiVersion: projectcalico.org/v3\nkind: Bogus\nmetadata: {name: x}\n",
        );
        let mut ds = LocalDatastore::new(d);
        let sync = ds.sync();
        assert!(sync.snapshot.is_empty());
        assert_eq!(sync.errors.len(), 1);
        assert_eq!(
            sync.errors[0].to_string(),
            "new.yaml:1: document 1 (Bogus x): kind: unknown \"Bogus\" (not a projectcalico.org/v3 kind this datastore knows)"
        );
        // Removing a broken file clears its errors.
        fs::remove_file(d.join("new.yaml")).unwrap();
        assert_eq!(ds.sync().errors, vec![]);
    }

    #[test]
    fn duplicates_across_files_keep_the_first_path() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(
            d,
            "b.yaml",
            &format!(
                "{}---\n{}",
                wep("x", "198.18.0.2"),
                wep("only-b", "198.18.0.4")
            ),
        );
        write(d, "a.yaml", &wep("x", "198.18.0.1"));
        let mut ds = LocalDatastore::new(d);
        let sync = ds.sync();
        assert_eq!(sync.errors.len(), 1);
        let e = &sync.errors[0];
        assert_eq!(e.kind, ErrorKind::Duplicate);
        assert_eq!((e.file.as_str(), e.document), ("b.yaml", Some(1)));
        assert_eq!(e.resource.as_deref(), Some("WorkloadEndpoint default/x"));
        assert!(e.message.contains("a.yaml"), "{e}");
        let x = sync.snapshot.workload_endpoint("default", "x").unwrap();
        assert_eq!(x.spec.ip_networks[0].to_string(), "198.18.0.1/32");
        // The rest of the later file is in force.
        assert!(
            sync.snapshot
                .workload_endpoint("default", "only-b")
                .is_some()
        );
        assert_eq!(sync.new_errors, sync.errors);
        assert_eq!(ds.sync().new_errors, vec![]);

        fs::remove_file(d.join("a.yaml")).unwrap();
        let sync = ds.sync();
        assert_eq!(sync.errors, vec![]);
        let x = sync.snapshot.workload_endpoint("default", "x").unwrap();
        assert_eq!(x.spec.ip_networks[0].to_string(), "198.18.0.2/32");
    }

    #[test]
    fn follows_symlinks_like_a_configmap_mount() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "..2024_01_01/web.yaml", &wep("a", "198.18.0.1"));
        std::os::unix::fs::symlink("..2024_01_01", d.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/web.yaml", d.join("web.yaml")).unwrap();
        std::os::unix::fs::symlink(".", d.join("loop")).unwrap();
        std::os::unix::fs::symlink("missing.yaml", d.join("dangling.yaml")).unwrap();
        let sync = LocalDatastore::new(d).sync();
        assert_eq!(sync.errors, vec![]);
        assert_eq!(names(&sync.snapshot), ["WorkloadEndpoint default/a"]);
    }

    #[test]
    fn an_unreadable_directory_is_reported_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("store");
        write(&d, "a.yaml", &wep("a", "198.18.0.1"));
        let mut ds = LocalDatastore::new(&d);
        assert_eq!(ds.sync().snapshot.len(), 1);
        fs::remove_dir_all(&d).unwrap();
        let sync = ds.sync();
        assert_eq!(sync.snapshot.len(), 1);
        assert_eq!(sync.errors.len(), 1);
        assert_eq!(sync.errors[0].kind, ErrorKind::Io);
        assert!(sync.errors[0].file.ends_with("store"), "{}", sync.errors[0]);
    }

    #[test]
    fn snapshots_compare_equal_when_nothing_changed() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "a.yaml", &wep("a", "198.18.0.1"));
        let mut ds = LocalDatastore::new(d);
        let first = ds.sync().snapshot;
        assert_eq!(ds.sync().snapshot, first);
        write(d, "a.yaml", &wep("a", "198.18.0.2"));
        assert_ne!(ds.sync().snapshot, first);
    }

    #[test]
    fn watching_a_missing_directory_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = watch(&missing).unwrap_err();
        assert!(matches!(e, WatchError::NotADirectory(_)));
        assert!(
            e.to_string().contains(&missing.display().to_string()),
            "{e}"
        );
    }

    async fn changed_within(watch: &mut DatastoreWatch, limit: Duration) -> bool {
        matches!(
            tokio::time::timeout(limit, watch.recv()).await,
            Ok(Some(()))
        )
    }

    #[tokio::test]
    async fn watch_sees_writes_renames_and_new_directories_but_not_reads() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut w = watch(d).unwrap();

        write(d, "a.yaml", &wep("a", "198.18.0.1"));
        assert!(
            changed_within(&mut w, Duration::from_secs(2)).await,
            "no notification for a write"
        );

        // Reading (a sync) is not a change.
        let mut ds = LocalDatastore::new(d);
        assert_eq!(ds.sync().snapshot.len(), 1);
        assert!(
            !changed_within(&mut w, Duration::from_millis(600)).await,
            "a read was notified"
        );

        // Replacing by rename, as editors save.
        write(d, ".a.yaml.new", &wep("a", "198.18.0.2"));
        fs::rename(d.join(".a.yaml.new"), d.join("a.yaml")).unwrap();
        assert!(
            changed_within(&mut w, Duration::from_secs(2)).await,
            "no notification for a rename"
        );
        assert_eq!(
            ds.sync()
                .snapshot
                .workload_endpoint("default", "a")
                .unwrap()
                .spec
                .ip_networks[0]
                .to_string(),
            "198.18.0.2/32"
        );

        // A file in a directory created after the watch began.
        fs::create_dir(d.join("sub")).unwrap();
        assert!(changed_within(&mut w, Duration::from_secs(2)).await);
        write(d, "sub/b.yaml", &wep("b", "198.18.0.3"));
        assert!(
            changed_within(&mut w, Duration::from_secs(2)).await,
            "no notification in a new directory"
        );
        assert_eq!(ds.sync().snapshot.len(), 2);

        // A burst of writes is one notification.
        for i in 0..5 {
            write(d, "c.yaml", &wep("c", &format!("198.18.1.{i}")));
        }
        assert!(changed_within(&mut w, Duration::from_secs(2)).await);
        assert!(
            !changed_within(&mut w, Duration::from_millis(400)).await,
            "a burst was notified twice"
        );
    }

    #[tokio::test]
    async fn watch_sees_a_configmap_update() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "..v1/web.yaml", &wep("a", "198.18.0.1"));
        std::os::unix::fs::symlink("..v1", d.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/web.yaml", d.join("web.yaml")).unwrap();
        let mut ds = LocalDatastore::new(d);
        assert_eq!(ds.sync().snapshot.len(), 1);
        let mut w = watch(d).unwrap();

        // How the kubelet updates a mounted ConfigMap.
        write(d, "..v2/web.yaml", &wep("a", "198.18.0.2"));
        std::os::unix::fs::symlink("..v2", d.join("..data_tmp")).unwrap();
        fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        fs::remove_dir_all(d.join("..v1")).unwrap();

        assert!(changed_within(&mut w, Duration::from_secs(2)).await);
        let sync = ds.sync();
        let a = sync.snapshot.workload_endpoint("default", "a").unwrap();
        assert_eq!(a.spec.ip_networks[0].to_string(), "198.18.0.2/32");
    }
}
