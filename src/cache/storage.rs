//! The in-memory HTTP cache storage behind Pingora's cache: a TinyUFO (S3-FIFO admission plus
//! TinyLFU eviction) bounded by a byte budget, one immutable object per key (metadata and body
//! in one `Bytes`, so a hit is a reference count, not a copy), and an index from URL and tag
//! to keys for purges by prefix and by tag. Pingora's own `MemCache` is documented as a test
//! double; this is what Postern serves from.
//!
//! Bodies are buffered by the miss handler up to the per-object cap and stored when complete
//! (Pingora's cache lock makes concurrent requests wait for that writer instead of reading a
//! partial object).

use crate::observability::metrics::Metrics;
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use pingora::cache::eviction::CacheEntryKey;
use pingora::cache::key::CacheHashKey;
use pingora::cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType, Storage,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheKey, CacheMeta};
use pingora::{Error, ErrorType, Result};
use std::any::Any;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;
use tinyufo::TinyUfo;

/// Unit of the TinyUFO weight (a `u16`): 4 KiB pages.
const PAGE: usize = 4096;

/// One stored response.
pub struct Object {
    key: String,
    url: String,
    tags: Box<[String]>,
    meta: (Vec<u8>, Vec<u8>),
    body: Bytes,
}

#[derive(Default)]
struct Index {
    /// URL (host + path + query) to the keys of its variants.
    by_url: BTreeMap<String, HashSet<String>>,
    by_tag: HashMap<String, HashSet<String>>,
    /// Key to (URL, tags), to undo the entries above.
    entries: HashMap<String, (String, Box<[String]>)>,
}

impl Index {
    fn add(&mut self, o: &Object) {
        self.add_parts(o.key.clone(), o.url.clone(), o.tags.clone());
    }

    fn add_parts(&mut self, key: String, url: String, tags: Box<[String]>) {
        self.remove(&key);
        self.by_url
            .entry(url.clone())
            .or_default()
            .insert(key.clone());
        for t in tags.iter() {
            self.by_tag
                .entry(t.clone())
                .or_default()
                .insert(key.clone());
        }
        self.entries.insert(key, (url, tags));
    }

    fn remove(&mut self, key: &str) {
        let Some((url, tags)) = self.entries.remove(key) else {
            return;
        };
        if let Some(s) = self.by_url.get_mut(&url) {
            s.remove(key);
            if s.is_empty() {
                self.by_url.remove(&url);
            }
        }
        for t in tags.iter() {
            if let Some(s) = self.by_tag.get_mut(t) {
                s.remove(key);
                if s.is_empty() {
                    self.by_tag.remove(t);
                }
            }
        }
    }
}

pub struct MemoryStorage {
    ufo: TinyUfo<String, Arc<Object>>,
    index: Mutex<Index>,
    max_object: usize,
    /// Optional second tier; memory holds the hot part.
    disk: Option<super::disk::Disk>,
    /// Counts stored bytes and evictions.
    metrics: Metrics,
}

/// What a purge by URL, prefix or tag did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    pub entries: usize,
}

impl MemoryStorage {
    pub fn new(bytes: usize, max_object: usize) -> MemoryStorage {
        let pages = (bytes / PAGE).max(1);
        MemoryStorage {
            // Estimated entry count for TinyUFO's sketches: a 16 KiB average object.
            ufo: TinyUfo::new(pages, (bytes / 16_384).max(64)),
            index: Mutex::new(Index::default()),
            max_object,
            disk: None,
            metrics: None,
        }
    }

    /// Counts stored bytes, evictions and the disk tier's size in these metrics.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Adds the disk tier; entries already on disk are indexed for lookups and purges.
    pub fn with_disk(mut self, dir: &std::path::Path, size: u64) -> std::io::Result<Self> {
        let (mut disk, found) = super::disk::Disk::open(dir, size)?;
        disk.metrics = self.metrics.clone();
        disk.report();
        {
            let mut index = self.index.lock();
            for f in found {
                index.add_parts(f.key, f.url, f.tags.into());
            }
        }
        self.disk = Some(disk);
        Ok(self)
    }

    /// Promotes an entry read from disk into memory (when TinyUFO admits it).
    fn promote(&self, r: super::disk::Record) -> Arc<Object> {
        let o = Arc::new(Object {
            key: r.key,
            url: r.url,
            tags: r.tags.into(),
            meta: r.meta,
            body: Bytes::from(r.body),
        });
        self.insert_arc(o.clone());
        o
    }

    fn weight(size: usize) -> u16 {
        size.div_ceil(PAGE).clamp(1, u16::MAX as usize) as u16
    }

    fn insert(&self, o: Object) -> usize {
        self.insert_arc(Arc::new(o))
    }

    fn insert_arc(&self, o: Arc<Object>) -> usize {
        let size = o.body.len() + o.meta.0.len() + o.meta.1.len();
        let key = o.key.clone();
        let mut index = self.index.lock();
        index.add(&o);
        for evicted in self.ufo.put(key, o, Self::weight(size)) {
            let k = &evicted.data.key;
            if self
                .ufo
                .get(k)
                .is_none_or(|cur| !Arc::ptr_eq(&cur, &evicted.data))
            {
                crate::observability::metrics::cache_evicted(&self.metrics);
                let on_disk = self.disk.as_ref().is_some_and(|d| d.contains(k));
                if self.ufo.get(k).is_none() && !on_disk {
                    index.remove(k);
                }
            }
        }
        size
    }

    fn remove_key(&self, key: &str, index: &mut Index) -> bool {
        index.remove(key);
        let on_disk = self.disk.as_ref().is_some_and(|d| d.remove(key));
        self.ufo.remove(&key.to_string()).is_some() || on_disk
    }

    /// Removes every variant stored for exactly this URL (`host/path?query`).
    pub fn purge_url(&self, url: &str) -> Purged {
        self.remove_keys(&self.select(super::PurgeKind::Url, url))
    }

    /// Keys of one URL, of a URL prefix or of a tag.
    pub fn select(&self, kind: super::PurgeKind, value: &str) -> Vec<String> {
        let i = self.index.lock();
        match kind {
            super::PurgeKind::Url => i.by_url.get(value).into_iter().flatten().cloned().collect(),
            super::PurgeKind::Prefix => i
                .by_url
                .range(value.to_string()..)
                .take_while(|(u, _)| u.starts_with(value))
                .flat_map(|(_, s)| s.iter().cloned())
                .collect(),
            super::PurgeKind::Tag => i.by_tag.get(value).into_iter().flatten().cloned().collect(),
        }
    }

    /// Marks entries stale instead of removing them (soft purge): they are served only while
    /// revalidating or when the origin fails, as their stale settings allow.
    pub fn expire_keys(&self, keys: &[String]) -> Purged {
        let mut entries = 0;
        for k in keys {
            // The disk copy would come back fresh after a restart: a soft purge drops it.
            if let Some(d) = &self.disk {
                if d.remove(k) && self.ufo.get(k).is_none() {
                    entries += 1;
                }
            }
            if let Some(o) = self.ufo.get(k) {
                if let Ok(mut meta) = CacheMeta::deserialize(&o.meta.0, &o.meta.1) {
                    meta.expire_at(SystemTime::now());
                    if let Ok(m) = meta.serialize() {
                        self.replace_meta(&o, m);
                        entries += 1;
                    }
                }
            }
        }
        Purged { entries }
    }

    /// Removes entries by key.
    pub fn remove_keys(&self, keys: &[String]) -> Purged {
        let mut index = self.index.lock();
        let entries = keys
            .iter()
            .filter(|k| self.remove_key(k, &mut index))
            .count();
        Purged { entries }
    }

    fn replace_meta(&self, o: &Object, meta: (Vec<u8>, Vec<u8>)) {
        self.insert(Object {
            key: o.key.clone(),
            url: o.url.clone(),
            tags: o.tags.clone(),
            meta,
            body: o.body.clone(),
        });
    }

    /// Number of objects held (for tests and metrics).
    pub fn len(&self) -> usize {
        self.index.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Tags of a response: `Surrogate-Key` (space separated) and `Cache-Tag` (comma separated).
fn tags_of(meta: &CacheMeta) -> Box<[String]> {
    let h = meta.headers();
    let mut tags: Vec<String> = Vec::new();
    for v in h.get_all("surrogate-key") {
        if let Ok(s) = v.to_str() {
            tags.extend(s.split_whitespace().map(String::from));
        }
    }
    for v in h.get_all("cache-tag") {
        if let Ok(s) = v.to_str() {
            tags.extend(
                s.split(',')
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty()),
            );
        }
    }
    tags.sort();
    tags.dedup();
    tags.into()
}

struct Hit {
    body: Bytes,
    done: bool,
    start: usize,
    end: usize,
}

#[async_trait::async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.start..self.end)))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        if start >= self.body.len() {
            return Error::e_explain(ErrorType::InternalError, "seek start out of range");
        }
        self.start = start;
        self.end = end.map_or(self.body.len(), |e| e.min(self.body.len()));
        self.done = false;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.body.len()
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

struct Miss {
    storage: &'static MemoryStorage,
    key: String,
    url: String,
    tags: Box<[String]>,
    meta: (Vec<u8>, Vec<u8>),
    body: BytesMut,
    too_large: bool,
}

#[async_trait::async_trait]
impl HandleMiss for Miss {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        if self.too_large || self.body.len() + data.len() > self.storage.max_object {
            // Pingora stops admitting at `max_file_size_bytes`; this is the storage's own guard.
            self.too_large = true;
            self.body = BytesMut::new();
            return Ok(());
        }
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        if self.too_large {
            return Ok(MissFinishType::Created(0));
        }
        let Miss {
            storage,
            key,
            url,
            tags,
            meta,
            body,
            ..
        } = *self;
        let body = body.freeze();
        if storage.disk.is_some() {
            let record = super::disk::Record {
                key: key.clone(),
                url: url.clone(),
                tags: tags.to_vec(),
                meta: meta.clone(),
                body: body.to_vec(),
            };
            // Written off the request path; memory serves the entry meanwhile.
            tokio::task::spawn_blocking(move || {
                if let Some(d) = &storage.disk {
                    d.write(&record);
                }
            });
        }
        let size = storage.insert(Object {
            key,
            url,
            tags,
            meta,
            body,
        });
        crate::observability::metrics::cache_stored(&storage.metrics, size);
        Ok(MissFinishType::Created(size))
    }
}

#[async_trait::async_trait]
impl Storage for MemoryStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let combined = key.combined();
        let o = match self.ufo.get(&combined) {
            Some(o) => o,
            None => {
                let Some(disk) = &self.disk else {
                    return Ok(None);
                };
                if !disk.contains(&combined) {
                    return Ok(None);
                }
                let read = tokio::task::spawn_blocking(move || {
                    self.disk.as_ref().and_then(|d| d.read(&combined))
                })
                .await
                .ok()
                .flatten();
                match read {
                    Some(r) => self.promote(r),
                    None => return Ok(None),
                }
            }
        };
        let meta = CacheMeta::deserialize(&o.meta.0, &o.meta.1)?;
        let hit = Hit {
            end: o.body.len(),
            body: o.body.clone(),
            done: false,
            start: 0,
        };
        Ok(Some((meta, Box::new(hit))))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        Ok(Box::new(Miss {
            storage: self,
            key: key.combined(),
            url: key.user_tag().to_string(),
            tags: tags_of(meta),
            meta: meta.serialize()?,
            body: BytesMut::new(),
            too_large: false,
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        if matches!(target, PurgeTarget::Exact(CacheEntryKey::Identified { .. })) {
            return Ok(PurgeOutcome::NotFound);
        }
        let key = target.key().combined();
        let mut index = self.index.lock();
        Ok(if self.remove_key(&key, &mut index) {
            PurgeOutcome::Purged(None)
        } else {
            PurgeOutcome::NotFound
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let Some(o) = self.ufo.get(&key.combined()) else {
            return Ok(false);
        };
        self.replace_meta(&o, meta.serialize()?);
        Ok(true)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}
