//! The disk tier of the HTTP cache: one file per entry under `cache.disk.path`, bounded by
//! `cache.disk.size` (oldest files go first), reloaded at start so entries survive restarts.
//!
//! A file is written to a temporary name and renamed into place, so a crash or a full disk never
//! leaves a half-written entry under a real name; every file carries a SHA-256 of its contents
//! and is checked when read: a damaged file is deleted and counted as a miss.
//!
//! Layout: `MAGIC`, then length-prefixed (u64 big-endian) key, URL, tags (newline-joined),
//! metadata (two parts), body, then the SHA-256 of everything before it.

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"PSTNC01\n";

/// One entry as stored on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: String,
    pub url: String,
    pub tags: Vec<String>,
    pub meta: (Vec<u8>, Vec<u8>),
    pub body: Vec<u8>,
}

impl Record {
    fn encode(&self) -> Vec<u8> {
        let tags = self.tags.join("\n");
        let parts: [&[u8]; 6] = [
            self.key.as_bytes(),
            self.url.as_bytes(),
            tags.as_bytes(),
            &self.meta.0,
            &self.meta.1,
            &self.body,
        ];
        let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 8).sum::<usize>() + 40);
        out.extend_from_slice(MAGIC);
        for p in parts {
            out.extend_from_slice(&(p.len() as u64).to_be_bytes());
            out.extend_from_slice(p);
        }
        let sum = Sha256::digest(&out);
        out.extend_from_slice(&sum);
        out
    }

    /// Parses and verifies a file's bytes; `None` for anything damaged.
    fn decode(bytes: &[u8]) -> Option<Record> {
        if bytes.len() < MAGIC.len() + 32 || &bytes[..MAGIC.len()] != MAGIC {
            return None;
        }
        let (content, sum) = bytes.split_at(bytes.len() - 32);
        if Sha256::digest(content).as_slice() != sum {
            return None;
        }
        let mut rest = &content[MAGIC.len()..];
        let mut take = || -> Option<Vec<u8>> {
            let len = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?) as usize;
            let v = rest.get(8..8 + len)?.to_vec();
            rest = &rest[8 + len..];
            Some(v)
        };
        let key = String::from_utf8(take()?).ok()?;
        let url = String::from_utf8(take()?).ok()?;
        let tags = String::from_utf8(take()?).ok()?;
        let meta = (take()?, take()?);
        let body = take()?;
        Some(Record {
            key,
            url,
            tags: tags
                .split('\n')
                .filter(|t| !t.is_empty())
                .map(String::from)
                .collect(),
            meta,
            body,
        })
    }
}

struct State {
    /// Key to file size, for the budget.
    sizes: HashMap<String, u64>,
    /// Keys from oldest to newest write.
    order: VecDeque<String>,
    total: u64,
}

pub struct Disk {
    dir: PathBuf,
    limit: u64,
    state: Mutex<State>,
    /// The gauge of the bytes held (set by the memory tier that owns this one).
    pub(super) metrics: crate::observability::metrics::Metrics,
}

/// What the start-up scan found, for the memory tier's URL and tag index.
pub struct Found {
    pub key: String,
    pub url: String,
    pub tags: Vec<String>,
}

impl Disk {
    /// Opens (creates) the directory and indexes the entries already there, oldest first;
    /// damaged and temporary files are removed.
    pub fn open(dir: &Path, limit: u64) -> std::io::Result<(Disk, Vec<Found>)> {
        std::fs::create_dir_all(dir)?;
        let mut files = Vec::new();
        for sub in std::fs::read_dir(dir)? {
            let sub = sub?.path();
            if !sub.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(&sub)? {
                let p = f?.path();
                if p.extension().is_some_and(|e| e == "tmp") {
                    let _ = std::fs::remove_file(&p);
                    continue;
                }
                let modified = p.metadata().and_then(|m| m.modified()).ok();
                files.push((modified, p));
            }
        }
        files.sort();
        let mut state = State {
            sizes: HashMap::new(),
            order: VecDeque::new(),
            total: 0,
        };
        let mut found = Vec::new();
        for (_, p) in files {
            match std::fs::read(&p)
                .ok()
                .and_then(|b| Record::decode(&b).map(|r| (r, b.len())))
            {
                Some((r, len)) if p.file_name().is_some_and(|n| n == r.key.as_str()) => {
                    state.sizes.insert(r.key.clone(), len as u64);
                    state.order.push_back(r.key.clone());
                    state.total += len as u64;
                    found.push(Found {
                        key: r.key,
                        url: r.url,
                        tags: r.tags,
                    });
                }
                _ => {
                    log::warn!("cache file {} is damaged; removed", p.display());
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
        let disk = Disk {
            dir: dir.to_path_buf(),
            limit,
            state: Mutex::new(state),
            metrics: None,
        };
        disk.trim();
        disk.report();
        Ok((disk, found))
    }

    fn path(&self, key: &str) -> PathBuf {
        let fan = key.get(..2).unwrap_or("00");
        self.dir.join(fan).join(key)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.state.lock().sizes.contains_key(key)
    }

    /// Reads and verifies an entry (blocking: call from the blocking pool).
    pub fn read(&self, key: &str) -> Option<Record> {
        if !self.contains(key) {
            return None;
        }
        let p = self.path(key);
        match std::fs::read(&p).ok().and_then(|b| Record::decode(&b)) {
            Some(r) if r.key == key => Some(r),
            _ => {
                log::warn!("cache file {} is damaged or missing; removed", p.display());
                self.remove(key);
                None
            }
        }
    }

    /// Writes an entry: temporary file, then rename (blocking: call from the blocking pool).
    /// A failure (a full disk) leaves no file behind and the entry memory-only.
    pub fn write(&self, r: &Record) {
        let bytes = r.encode();
        if bytes.len() as u64 > self.limit {
            return;
        }
        let p = self.path(&r.key);
        let tmp = p.with_extension("tmp");
        let written = (|| {
            std::fs::create_dir_all(p.parent().unwrap_or(&self.dir))?;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_data()?;
            std::fs::rename(&tmp, &p)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            log::warn!("cache entry not written to disk: {e}");
            return;
        }
        {
            let mut s = self.state.lock();
            if let Some(old) = s.sizes.insert(r.key.clone(), bytes.len() as u64) {
                s.total -= old;
                s.order.retain(|k| k != &r.key);
            }
            s.total += bytes.len() as u64;
            s.order.push_back(r.key.clone());
        }
        self.trim();
        self.report();
    }

    /// Removes an entry's file; `true` when there was one.
    pub fn remove(&self, key: &str) -> bool {
        let had = {
            let mut s = self.state.lock();
            match s.sizes.remove(key) {
                Some(size) => {
                    s.total -= size;
                    s.order.retain(|k| k != key);
                    true
                }
                None => false,
            }
        };
        let _ = std::fs::remove_file(self.path(key));
        had
    }

    /// Deletes the oldest files until the total fits the budget; returns the removed keys.
    fn trim(&self) -> Vec<String> {
        let mut gone = Vec::new();
        loop {
            let victim = {
                let mut s = self.state.lock();
                if s.total <= self.limit {
                    break;
                }
                let Some(k) = s.order.pop_front() else { break };
                if let Some(size) = s.sizes.remove(&k) {
                    s.total -= size;
                }
                k
            };
            let _ = std::fs::remove_file(self.path(&victim));
            gone.push(victim);
        }
        gone
    }

    pub fn total_bytes(&self) -> u64 {
        self.state.lock().total
    }

    pub(super) fn report(&self) {
        crate::observability::metrics::cache_disk_bytes(&self.metrics, self.total_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, body: usize) -> Record {
        Record {
            key: key.into(),
            url: format!("h/{key}"),
            tags: vec!["t1".into()],
            meta: (vec![1, 2], vec![3]),
            body: vec![7; body],
        }
    }

    #[test]
    fn round_trip_survives_reopen_and_rejects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let (d, found) = Disk::open(dir.path(), 1 << 20).unwrap();
        assert!(found.is_empty());
        d.write(&record("aa11", 100));
        d.write(&record("bb22", 100));
        assert_eq!(d.read("aa11"), Some(record("aa11", 100)));
        drop(d);
        let (d, found) = Disk::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(found.len(), 2, "entries survive a restart");
        // Flip one byte of a file: the checksum catches it, the file goes.
        let p = d.path("bb22");
        let mut b = std::fs::read(&p).unwrap();
        b[20] ^= 0xff;
        std::fs::write(&p, b).unwrap();
        assert_eq!(d.read("bb22"), None);
        assert!(!p.exists());
        // A leftover temporary file (a crash mid-write) is cleaned at start.
        std::fs::write(dir.path().join("aa").join("cc33.tmp"), b"partial").unwrap();
        drop(d);
        let (_, found) = Disk::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(found.len(), 1);
        assert!(!dir.path().join("aa").join("cc33.tmp").exists());
    }

    #[test]
    fn the_budget_removes_oldest_files() {
        let dir = tempfile::tempdir().unwrap();
        let (d, _) = Disk::open(dir.path(), 10_000).unwrap();
        for i in 0..10 {
            d.write(&record(&format!("k{i:03}"), 3000));
        }
        assert!(d.total_bytes() <= 10_000);
        assert!(!d.contains("k000") && d.contains("k009"));
    }
}
