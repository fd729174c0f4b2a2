//! The events file: JSON lines, appended as events are recorded and
//! rewritten with the last N (atomically, as the state file is) once it
//! holds 2N lines, so it stays bounded. A line that does not parse (a
//! crash mid-write) is skipped with a warning.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use api::Event;
use tracing::warn;

use crate::store::{Saved, Store};

/// Longest line read back; a longer one is corrupt (ours are far shorter).
const MAX_LINE: usize = 16 * 1024;

/// What [`load`] found.
#[derive(Debug, Default)]
pub(super) struct Loaded {
    /// The last `max` good events, oldest first.
    pub(super) events: Vec<Event>,
    /// Lines in the file, good or not.
    pub(super) lines: usize,
    /// Lines skipped: not an event, too long, or out of order.
    pub(super) skipped: usize,
    /// The file does not end with a newline (a torn last write).
    pub(super) torn: bool,
}

/// Reads the last `max` events of `path`; a missing file is empty.
///
/// # Errors
/// When the file exists but cannot be read.
pub(super) fn load(path: &Path, max: usize) -> std::io::Result<Loaded> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::default()),
        Err(e) => return Err(e),
    };
    let mut reader = BufReader::new(file);
    let mut kept: VecDeque<Event> = VecDeque::with_capacity(max.min(1024));
    let mut loaded = Loaded::default();
    let mut line = Vec::new();
    let mut last_seq = 0;
    loop {
        line.clear();
        let n = (&mut reader).take(MAX_LINE as u64 + 1).read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        loaded.lines += 1;
        let ended = line.last() == Some(&b'\n');
        if !ended && line.len() > MAX_LINE {
            // Skip the rest of an over-long line without holding it.
            skip_line(&mut reader)?;
            loaded.skipped += 1;
            continue;
        }
        loaded.torn = !ended;
        match serde_json::from_slice::<Event>(&line) {
            Ok(event) if event.seq > last_seq => {
                last_seq = event.seq;
                if kept.len() == max {
                    kept.pop_front();
                }
                kept.push_back(event);
            }
            Ok(_) | Err(_) => loaded.skipped += 1,
        }
    }
    loaded.events = kept.into();
    Ok(loaded)
}

fn skip_line(reader: &mut impl BufRead) -> std::io::Result<()> {
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        if let Some(i) = buf.iter().position(|&b| b == b'\n') {
            reader.consume(i + 1);
            return Ok(());
        }
        let len = buf.len();
        reader.consume(len);
    }
}

/// The open events file.
#[derive(Debug)]
pub(super) struct EventFile {
    path: PathBuf,
    out: Option<BufWriter<File>>,
    /// Lines in the file now.
    lines: usize,
    /// Compact when the file holds more lines than this (2N).
    compact_above: usize,
}

impl EventFile {
    /// Opens `path` for appending after [`load`] found `lines` lines in it;
    /// `max` is N. Call [`compact`](Self::compact) first if the file was
    /// torn or held bad lines.
    pub(super) fn new(path: PathBuf, lines: usize, max: usize) -> Self {
        Self { path, out: None, lines, compact_above: max.saturating_mul(2) }
    }

    /// Appends one event (buffered until [`flush`](Self::flush)).
    ///
    /// # Errors
    /// When the file cannot be opened or written.
    pub(super) fn append(&mut self, event: &Event) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(event).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let out = match &mut self.out {
            Some(out) => out,
            None => self.out.insert(BufWriter::new(open_append(&self.path)?)),
        };
        out.write_all(&line)?;
        self.lines += 1;
        Ok(())
    }

    /// Writes what is buffered.
    ///
    /// # Errors
    /// When the write fails (the handle is dropped and reopened next time).
    pub(super) fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.out {
            Some(out) => out.flush().inspect_err(|_| self.out = None),
            None => Ok(()),
        }
    }

    /// Whether the file has grown past 2N lines.
    pub(super) fn needs_compaction(&self) -> bool {
        self.lines > self.compact_above
    }

    /// Replaces the file with `events` (the last N) atomically.
    ///
    /// # Errors
    /// When the new file cannot be written; the old one is left as it was.
    pub(super) fn compact<'a>(
        &mut self,
        events: impl Iterator<Item = &'a Arc<Event>>,
    ) -> Result<(), String> {
        let _ = self.flush();
        let mut bytes = Vec::new();
        let mut count = 0;
        for event in events {
            serde_json::to_writer(&mut bytes, &**event).map_err(|e| e.to_string())?;
            bytes.push(b'\n');
            count += 1;
        }
        let saved = Store::new(self.path.clone()).save_bytes(&bytes).map_err(|e| e.to_string())?;
        if let Saved::NotSynced(e) = saved {
            warn!(error = %e, "events file compacted but its directory not synced");
        }
        // The old handle writes to the replaced file: open the new one.
        self.out = None;
        self.lines = count;
        Ok(())
    }
}

/// Opens `path` for appending, creating it readable by the agent only.
fn open_append(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64) -> Arc<Event> {
        Arc::new(Event {
            seq,
            at_unix_ms: seq,
            kind: api::EventKind::MappingAdded,
            subject: "web".into(),
            text: format!("added {seq}"),
            node: None,
        })
    }

    fn seqs(events: &[Event]) -> Vec<u64> {
        events.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn appended_events_load_back_and_a_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let loaded = load(&path, 10).unwrap();
        assert_eq!((loaded.events.len(), loaded.lines), (0, 0));
        let mut file = EventFile::new(path.clone(), 0, 10);
        for seq in 1..=4 {
            file.append(&event(seq)).unwrap();
        }
        file.flush().unwrap();
        let loaded = load(&path, 3).unwrap();
        assert_eq!(seqs(&loaded.events), [2, 3, 4], "the last max only");
        assert_eq!((loaded.lines, loaded.skipped, loaded.torn), (4, 0, false));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }

    #[test]
    fn a_corrupt_or_torn_line_is_skipped_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let good = |seq| serde_json::to_string(&*event(seq)).unwrap();
        let long = "x".repeat(MAX_LINE * 3);
        let text = format!(
            "{}\nnot json\n{long}\n{}\n{}\n{}",
            good(1),
            good(3),
            good(2), // out of order: skipped
            &good(4)[..20]
        );
        std::fs::write(&path, text).unwrap();
        let loaded = load(&path, 10).unwrap();
        assert_eq!(seqs(&loaded.events), [1, 3]);
        assert_eq!((loaded.lines, loaded.skipped, loaded.torn), (6, 4, true));
    }

    #[test]
    fn compaction_keeps_the_last_n_once_the_file_passes_2n() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut file = EventFile::new(path.clone(), 0, 3);
        let mut ring = crate::events::ring::Ring::new(3);
        for seq in 1..=7 {
            let e = event(seq);
            file.append(&e).unwrap();
            ring.push(e);
            if file.needs_compaction() {
                assert_eq!(seq, 7, "compacts after 2N = 6 lines");
                file.compact(ring.iter()).unwrap();
            }
        }
        file.append(&event(8)).unwrap();
        file.flush().unwrap();
        let loaded = load(&path, 100).unwrap();
        assert_eq!(seqs(&loaded.events), [5, 6, 7, 8]);
        assert_eq!(loaded.lines, 4);
        let tmp_left = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(tmp_left, 1, "no temporary file left behind");
    }
}
