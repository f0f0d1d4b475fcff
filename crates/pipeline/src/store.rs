//! One object store behind the registry and the day's data: a local
//! directory (`LocalFileSystem`) or an S3 bucket and prefix
//! (`AmazonS3Builder::from_env()`: `AWS_*` variables, IRSA's web identity
//! token on EKS, `AWS_ENDPOINT_URL` + `AWS_ALLOW_HTTP=true` for S3-compatible
//! stores).
//!
//! The pipeline is sync code around subprocesses, so the store owns a small
//! current-thread tokio runtime and blocks on each call; nothing here is on a
//! hot path.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures_util::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as Key;
use object_store::{
    ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion, WriteMultipart,
};

/// Files above this go up in parts (S3 takes at most 5 GiB in one PUT, and a
/// part failing is retried alone).
const MULTIPART_ABOVE: u64 = 16 << 20;
const PART_SIZE: usize = 8 << 20;

pub struct Store {
    inner: Arc<dyn ObjectStore>,
    /// Keys are `prefix/key` in the bucket; empty for a local directory.
    prefix: String,
    /// The local directory, when the store is one.
    local: Option<PathBuf>,
    uri: String,
    rt: tokio::runtime::Runtime,
}

/// A conditional write lost: someone else wrote the object since it was read.
#[derive(Debug)]
pub struct Conflict(pub String);

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Conflict {}

/// Splits `s3://bucket/rest` into (bucket, rest without slashes at the ends).
pub fn parse_s3(uri: &str) -> Result<(String, String)> {
    let rest = uri
        .strip_prefix("s3://")
        .with_context(|| format!("{uri}: not an s3:// URI"))?;
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        bail!("{uri}: no bucket (expected s3://BUCKET/PREFIX)");
    }
    Ok((bucket.to_string(), key.trim_matches('/').to_string()))
}

/// A local path for `file://` URIs and plain paths; None for other schemes.
pub fn local_path(uri: &str) -> Option<PathBuf> {
    if let Some(p) = uri.strip_prefix("file://") {
        return Some(PathBuf::from(p));
    }
    (!uri.contains("://")).then(|| PathBuf::from(uri))
}

impl Store {
    /// A local path, `file:///abs/path` or `s3://bucket/prefix`.
    pub fn open(uri: &str) -> Result<Store> {
        if let Some(path) = local_path(uri) {
            return Store::local(&path);
        }
        if uri.starts_with("s3://") {
            let (bucket, prefix) = parse_s3(uri)?;
            // reqwest is built without a crypto provider (so aws-lc-rs is not
            // compiled in); ring, already in the tree, is installed here. An
            // Err means one is already installed, which is as good.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let s3 = AmazonS3Builder::from_env()
                .with_bucket_name(&bucket)
                .build()
                .with_context(|| format!("{uri}: cannot configure S3 (AWS_* environment)"))?;
            return Store::new(Arc::new(s3), prefix, None, uri);
        }
        bail!("{uri}: unsupported URI; use a local path, file:// or s3://BUCKET/PREFIX")
    }

    pub fn local(root: &Path) -> Result<Store> {
        std::fs::create_dir_all(root)
            .with_context(|| format!("{}: cannot create", root.display()))?;
        let fs = LocalFileSystem::new_with_prefix(root)
            .with_context(|| format!("{}: cannot open as a store", root.display()))?;
        Store::new(
            Arc::new(fs),
            String::new(),
            Some(root.to_path_buf()),
            &root.display().to_string(),
        )
    }

    fn new(
        inner: Arc<dyn ObjectStore>,
        prefix: String,
        local: Option<PathBuf>,
        uri: &str,
    ) -> Result<Store> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the object store's runtime")?;
        Ok(Store {
            inner,
            prefix,
            local,
            uri: uri.to_string(),
            rt,
        })
    }

    /// The directory, for a local store.
    pub fn local_root(&self) -> Option<&Path> {
        self.local.as_deref()
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    fn key(&self, key: &str) -> Key {
        let key = key.trim_start_matches('/');
        if self.prefix.is_empty() {
            Key::from(key)
        } else {
            Key::from(format!("{}/{key}", self.prefix))
        }
    }

    fn relative(&self, key: &Key) -> String {
        let s = key.as_ref();
        if self.prefix.is_empty() {
            return s.to_string();
        }
        s.strip_prefix(&self.prefix)
            .unwrap_or(s)
            .trim_start_matches('/')
            .to_string()
    }

    fn name(&self, key: &str) -> String {
        match &self.local {
            Some(root) => root.join(key).display().to_string(),
            None => format!("{}/{key}", self.uri.trim_end_matches('/')),
        }
    }

    /// The object, or None when there is none.
    pub fn get(&self, key: &str) -> Result<Option<Bytes>> {
        Ok(self.get_versioned(key)?.map(|(b, _)| b))
    }

    /// The object and the version a conditional write must match.
    pub fn get_versioned(&self, key: &str) -> Result<Option<(Bytes, UpdateVersion)>> {
        let k = self.key(key);
        let got = self.rt.block_on(async {
            match self.inner.get(&k).await {
                Ok(r) => {
                    let version = UpdateVersion {
                        e_tag: r.meta.e_tag.clone(),
                        version: r.meta.version.clone(),
                    };
                    Ok(Some((r.bytes().await?, version)))
                }
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        });
        got.with_context(|| format!("{}: cannot read", self.name(key)))
    }

    pub fn exists(&self, key: &str) -> Result<bool> {
        let k = self.key(key);
        match self.rt.block_on(self.inner.head(&k)) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e).with_context(|| format!("{}: cannot read", self.name(key))),
        }
    }

    /// Replaces the object whole (a local store writes a temp file and renames it).
    pub fn put(&self, key: &str, bytes: impl Into<Bytes>) -> Result<()> {
        let k = self.key(key);
        self.rt
            .block_on(self.inner.put(&k, PutPayload::from_bytes(bytes.into())))
            .with_context(|| format!("{}: cannot write", self.name(key)))?;
        Ok(())
    }

    /// Writes only if the object is still at `expected` (None: only if there
    /// is none). S3 checks it server-side (`If-Match` / `If-None-Match: *`),
    /// so of two writers that read the same version one loses. A local
    /// directory has no compare-and-swap for replacing a file: the ETag
    /// (mtime and size) is compared, then the file replaced by rename; the
    /// pipeline's run lock is what keeps two local writers apart.
    pub fn put_if(
        &self,
        key: &str,
        bytes: impl Into<Bytes>,
        expected: Option<&UpdateVersion>,
    ) -> Result<()> {
        let k = self.key(key);
        let bytes: Bytes = bytes.into();
        let lost = || {
            Conflict(format!(
                "{}: changed since this process read it (another writer); not overwritten",
                self.name(key)
            ))
        };
        if self.local.is_some() {
            if let Some(v) = expected {
                let now = match self.rt.block_on(self.inner.head(&k)) {
                    Ok(m) => Some(m.e_tag),
                    Err(object_store::Error::NotFound { .. }) => None,
                    Err(e) => {
                        return Err(e).with_context(|| format!("{}: cannot read", self.name(key)))
                    }
                };
                if now != Some(v.e_tag.clone()) {
                    return Err(lost().into());
                }
                return self.put(key, bytes);
            }
        }
        let mode = match expected {
            Some(v) => PutMode::Update(v.clone()),
            None => PutMode::Create,
        };
        let opts = PutOptions {
            mode,
            ..PutOptions::default()
        };
        let payload = PutPayload::from_bytes(bytes);
        match self.rt.block_on(self.inner.put_opts(&k, payload, opts)) {
            Ok(_) => Ok(()),
            Err(object_store::Error::Precondition { .. })
            | Err(object_store::Error::AlreadyExists { .. }) => Err(lost().into()),
            Err(e) => Err(e).with_context(|| format!("{}: cannot write", self.name(key))),
        }
    }

    /// Uploads a file; large ones in parts, read from disk a part at a time.
    pub fn put_file(&self, key: &str, file: &Path) -> Result<()> {
        let size = std::fs::metadata(file)
            .with_context(|| format!("{}: cannot read", file.display()))?
            .len();
        if size <= MULTIPART_ABOVE {
            let bytes =
                std::fs::read(file).with_context(|| format!("{}: cannot read", file.display()))?;
            return self.put(key, bytes);
        }
        let k = self.key(key);
        let up = self.rt.block_on(async {
            let upload = self.inner.put_multipart(&k).await?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            let mut f = std::fs::File::open(file).map_err(|e| object_store::Error::Generic {
                store: "local file",
                source: Box::new(e),
            })?;
            loop {
                let mut buf = vec![0u8; PART_SIZE];
                let n = read_full(&mut f, &mut buf).map_err(|e| object_store::Error::Generic {
                    store: "local file",
                    source: Box::new(e),
                })?;
                if n == 0 {
                    break;
                }
                buf.truncate(n);
                // Bounds the parts in flight (memory) to a few.
                w.wait_for_capacity(4).await?;
                w.put(Bytes::from(buf));
            }
            w.finish().await
        });
        up.with_context(|| format!("uploading {} to {}", file.display(), self.name(key)))?;
        Ok(())
    }

    /// Uploads a directory tree under `key/`. Follows links (the real MiniLM
    /// directory is a link into site-packages); skips training checkpoints.
    pub fn put_dir(&self, key: &str, dir: &Path) -> Result<()> {
        for entry in
            std::fs::read_dir(dir).with_context(|| format!("{}: cannot read", dir.display()))?
        {
            let entry = entry?;
            let from = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let to = format!("{key}/{name}");
            if std::fs::metadata(&from)?.is_dir() {
                if name == "checkpoints" {
                    continue;
                }
                self.put_dir(&to, &from)?;
            } else {
                self.put_file(&to, &from)?;
            }
        }
        Ok(())
    }

    /// Every key under `prefix` (relative to the store), sorted.
    pub fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let k = self.key(prefix.trim_end_matches('/'));
        let metas: Vec<_> = self
            .rt
            .block_on(self.inner.list(Some(&k)).collect::<Vec<_>>());
        let mut out = Vec::new();
        for m in metas {
            let m = m.with_context(|| format!("{}: cannot list", self.name(prefix)))?;
            out.push(self.relative(&m.location));
        }
        out.sort();
        Ok(out)
    }

    /// The names one level below `prefix/` (like `ls`).
    pub fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        let k = self.key(prefix.trim_end_matches('/'));
        let r = self
            .rt
            .block_on(self.inner.list_with_delimiter(Some(&k)))
            .with_context(|| format!("{}: cannot list", self.name(prefix)))?;
        let mut out: Vec<String> = r
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(String::from))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Deletes every key under `prefix`.
    pub fn delete_prefix(&self, prefix: &str) -> Result<()> {
        for key in self.list(prefix)? {
            let k = self.key(&key);
            match self.rt.block_on(self.inner.delete(&k)) {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("{}: cannot delete", self.name(&key)))
                }
            }
        }
        Ok(())
    }

    /// Downloads every object under `prefix/` into `dst` (which must not
    /// exist yet), streaming each to disk.
    pub fn get_dir(&self, prefix: &str, dst: &Path) -> Result<usize> {
        let prefix = prefix.trim_end_matches('/');
        let keys = self.list(prefix)?;
        for key in &keys {
            let rel = key[prefix.len()..].trim_start_matches('/');
            let to = dst.join(rel);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("{}: cannot create", parent.display()))?;
            }
            let k = self.key(key);
            let done = self.rt.block_on(async {
                let mut stream = self.inner.get(&k).await?.into_stream();
                let mut f = std::fs::File::create(&to).map_err(generic)?;
                while let Some(chunk) = stream.next().await {
                    std::io::Write::write_all(&mut f, &chunk?).map_err(generic)?;
                }
                Ok::<(), object_store::Error>(())
            });
            done.with_context(|| format!("downloading {} to {}", self.name(key), to.display()))?;
        }
        Ok(keys.len())
    }
}

fn generic(e: std::io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "local file",
        source: Box::new(e),
    }
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Reads a whole object named by a URI: a local path, `file://` or `s3://bucket/key`.
pub fn read_uri(uri: &str) -> Result<Vec<u8>> {
    if let Some(path) = local_path(uri) {
        return std::fs::read(&path).with_context(|| format!("{uri}: cannot read"));
    }
    let (bucket, key) = parse_s3(uri)?;
    if key.is_empty() {
        bail!("{uri}: names a bucket, not an object (expected s3://BUCKET/KEY)");
    }
    let store = Store::open(&format!("s3://{bucket}"))?;
    match store.get(&key)? {
        Some(b) => Ok(b.to_vec()),
        None => bail!("{uri}: no such object"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_list_on_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&format!("file://{}", dir.path().display())).unwrap();
        assert_eq!(s.get("a/b.json").unwrap(), None);
        assert!(!s.exists("a/b.json").unwrap());
        s.put("a/b.json", b"{}".to_vec()).unwrap();
        s.put("a/c/d.txt", b"x".to_vec()).unwrap();
        s.put("e.txt", b"y".to_vec()).unwrap();
        // Keys are files where the directory layout says.
        assert_eq!(std::fs::read(dir.path().join("a/c/d.txt")).unwrap(), b"x");
        assert_eq!(s.get("a/b.json").unwrap().unwrap().as_ref(), b"{}");
        assert_eq!(s.list("a").unwrap(), vec!["a/b.json", "a/c/d.txt"]);
        assert_eq!(s.list_dirs("a").unwrap(), vec!["c"]);
        assert_eq!(s.list_dirs("").unwrap(), vec!["a"]);
        s.delete_prefix("a").unwrap();
        assert!(s.list("a").unwrap().is_empty());
        assert!(s.exists("e.txt").unwrap());
    }

    #[test]
    fn files_and_directories_round_trip_also_in_parts() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::create_dir_all(src.join("checkpoints")).unwrap();
        std::fs::write(src.join("checkpoints/skip"), "x").unwrap();
        // Over MULTIPART_ABOVE: goes up in parts; not a multiple of the part size.
        let big: Vec<u8> = (0..(MULTIPART_ABOVE as usize + PART_SIZE + 12345))
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(src.join("sub/big.bin"), &big).unwrap();
        std::fs::write(src.join("small.txt"), "hello").unwrap();
        let s = Store::local(&dir.path().join("store")).unwrap();
        s.put_dir("v/model", &src).unwrap();
        assert_eq!(
            s.list("v").unwrap(),
            vec!["v/model/small.txt", "v/model/sub/big.bin"]
        );
        let out = dir.path().join("out");
        assert_eq!(s.get_dir("v/model", &out).unwrap(), 2);
        assert_eq!(std::fs::read(out.join("sub/big.bin")).unwrap(), big);
        assert_eq!(std::fs::read(out.join("small.txt")).unwrap(), b"hello");
    }

    #[test]
    fn conditional_writes_refuse_a_stale_version() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::local(dir.path()).unwrap();
        // Create: only when absent.
        s.put_if("aliases.json", b"1".to_vec(), None).unwrap();
        let err = s.put_if("aliases.json", b"2".to_vec(), None).unwrap_err();
        assert!(err.downcast_ref::<Conflict>().is_some(), "{err:#}");
        // Update: two writers read the same version; the second loses.
        let (_, v) = s.get_versioned("aliases.json").unwrap().unwrap();
        // mtime-based ETags: make sure the first write lands on a later mtime.
        std::thread::sleep(std::time::Duration::from_millis(20));
        s.put_if("aliases.json", b"first".to_vec(), Some(&v))
            .unwrap();
        let err = s
            .put_if("aliases.json", b"second".to_vec(), Some(&v))
            .unwrap_err();
        assert!(err.to_string().contains("another writer"), "{err:#}");
        assert_eq!(s.get("aliases.json").unwrap().unwrap().as_ref(), b"first");
    }

    #[test]
    fn uris() {
        assert_eq!(
            parse_s3("s3://b/p/q/").unwrap(),
            ("b".to_string(), "p/q".to_string())
        );
        assert!(parse_s3("s3:///x").is_err());
        assert_eq!(local_path("file:///tmp/x"), Some(PathBuf::from("/tmp/x")));
        assert_eq!(local_path("rel/x"), Some(PathBuf::from("rel/x")));
        assert_eq!(local_path("gs://b/x"), None);
        let err = Store::open("gs://b/x").err().unwrap().to_string();
        assert!(err.contains("unsupported URI"), "{err}");
    }
}
