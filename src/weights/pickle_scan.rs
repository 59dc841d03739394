//! Measuring the pickles of a legacy (non-zip) `torch.save` file without building any object,
//! so an oversized one is refused before the PyTorch reader parses it (a pickle's objects take
//! many times its size in memory).
//!
//! A legacy file is five pickles back to back (`torch/serialization.py`, `_legacy_save`: the
//! magic number, the protocol version, `sys_info`, the state dict, the storage keys), then the
//! raw storages. Walking opcodes only needs each opcode's argument length.

use std::io::{BufRead, Read};

/// Pickles in a legacy `torch.save` file, before the raw storages.
pub const LEGACY_PICKLES: usize = 5;

/// What walking the start of a file found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PickleExtent {
    /// The pickles end after this many bytes.
    Ends(u64),
    /// The pickles run past `limit` bytes without ending.
    Exceeds(u64),
    /// Not a sequence of well-formed pickles (an unknown opcode, or the file ends early): the
    /// reader gives its own error.
    Malformed,
}

/// Walks `count` pickles from `reader`, reading at most `limit` bytes (streamed: memory stays
/// a buffer's worth whatever the file holds).
pub fn pickles_extent(reader: impl Read, count: usize, limit: u64) -> PickleExtent {
    // One byte past the limit tells "exactly at the limit" from "beyond it".
    let mut cursor = Cursor {
        inner: std::io::BufReader::new(reader.take(limit + 1)),
        at: 0,
    };
    for _ in 0..count {
        match walk_one(&mut cursor) {
            Ok(()) => {}
            Err(Walk::Truncated) if cursor.at > limit => return PickleExtent::Exceeds(limit),
            Err(_) => return PickleExtent::Malformed,
        }
    }
    PickleExtent::Ends(cursor.at)
}

/// Why a walk stopped before a pickle's STOP opcode.
enum Walk {
    /// The bytes ran out (or could not be read).
    Truncated,
    /// An opcode no pickle protocol has.
    Unknown,
}

/// A buffered reader that counts the bytes it has consumed.
struct Cursor<R> {
    inner: std::io::BufReader<R>,
    at: u64,
}

impl<R: Read> Cursor<R> {
    fn byte(&mut self) -> Result<u8, Walk> {
        let mut b = [0u8; 1];
        self.inner.read_exact(&mut b).map_err(|_| Walk::Truncated)?;
        self.at += 1;
        Ok(b[0])
    }

    /// Skips `n` bytes, all of which must exist.
    fn skip(&mut self, n: u64) -> Result<(), Walk> {
        let skipped = std::io::copy(&mut (&mut self.inner).take(n), &mut std::io::sink())
            .map_err(|_| Walk::Truncated)?;
        self.at += skipped;
        if skipped == n {
            Ok(())
        } else {
            Err(Walk::Truncated)
        }
    }

    /// Skips through the next newline.
    fn line(&mut self) -> Result<(), Walk> {
        loop {
            let buf = self.inner.fill_buf().map_err(|_| Walk::Truncated)?;
            if buf.is_empty() {
                return Err(Walk::Truncated);
            }
            let (used, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(p) => (p + 1, true),
                None => (buf.len(), false),
            };
            self.inner.consume(used);
            self.at += used as u64;
            if done {
                return Ok(());
            }
        }
    }
}

/// How an opcode's argument is laid out.
enum Arg {
    None,
    Fixed(u64),
    /// A little-endian length of this many bytes, then that many bytes.
    Counted(usize),
    /// This many newline-terminated lines.
    Lines(usize),
}

/// The argument of each opcode of pickle protocols 0–5 (CPython's `pickletools`).
fn argument(op: u8) -> Option<Arg> {
    Some(match op {
        b'(' | b'.' | b'0' | b'1' | b'2' | b'N' | b'R' | b'a' | b'b' | b'd' | b'}' | b'e'
        | b'l' | b']' | b'o' | b's' | b't' | b')' | b'u' | b'Q' => Arg::None,
        0x81 | 0x85 | 0x86 | 0x87 | 0x88 | 0x89 | 0x8f | 0x90 | 0x91 | 0x92 | 0x93 | 0x94
        | 0x97 | 0x98 => Arg::None,
        b'I' | b'L' | b'S' | b'V' | b'F' | b'P' | b'g' | b'p' => Arg::Lines(1),
        b'i' | b'c' => Arg::Lines(2),
        b'K' | b'h' | b'q' | 0x80 | 0x82 => Arg::Fixed(1),
        b'M' | 0x83 => Arg::Fixed(2),
        b'J' | b'j' | b'r' | 0x84 => Arg::Fixed(4),
        b'G' | 0x95 => Arg::Fixed(8),
        b'U' | b'C' | 0x8c | 0x8a => Arg::Counted(1),
        b'T' | b'X' | b'B' | 0x8b => Arg::Counted(4),
        0x8d | 0x8e | 0x96 => Arg::Counted(8),
        _ => return None,
    })
}

/// Walks one pickle, through its STOP opcode.
fn walk_one<R: Read>(c: &mut Cursor<R>) -> Result<(), Walk> {
    loop {
        let op = c.byte()?;
        match argument(op).ok_or(Walk::Unknown)? {
            _ if op == b'.' => return Ok(()),
            Arg::None => {}
            Arg::Fixed(n) => c.skip(n)?,
            Arg::Counted(width) => {
                let mut le = [0u8; 8];
                for b in le.iter_mut().take(width) {
                    *b = c.byte()?;
                }
                c.skip(u64::from_le_bytes(le))?;
            }
            Arg::Lines(n) => {
                for _ in 0..n {
                    c.line()?;
                }
            }
        }
    }
}

/// Top-level keys of a pickled dict whose value is the same object as an earlier key's
/// (`torch.save({"model": sd, "model_ema": sd})`: the second is a memo reference), as
/// `alias → original`. CPython's memo aliases objects; the PyTorch reader's memo holds copies
/// taken when an object was memoized, before its items were set, so it reads the alias as an
/// empty dict. This follows only object identities through the stack and memo, building
/// nothing. A pickle it cannot follow has no aliases.
pub fn top_level_aliases(pickle: &[u8]) -> std::collections::BTreeMap<String, String> {
    aliases(pickle).unwrap_or_default()
}

/// A stack slot: a MARK, or an object's identity (with its text when it is a string).
#[derive(Clone)]
enum Slot {
    Mark,
    Object { id: u32, text: Option<String> },
}

fn aliases(pickle: &[u8]) -> Option<std::collections::BTreeMap<String, String>> {
    use std::collections::{BTreeMap, HashMap};
    let mut stack: Vec<Slot> = Vec::new();
    let mut memo: HashMap<u64, Slot> = HashMap::new();
    // Items set on each object, by identity: (key text, value identity).
    let mut items: HashMap<u32, Vec<(Option<String>, u32)>> = HashMap::new();
    let mut next_id = 0u32;
    let mut fresh = |text: Option<String>| {
        next_id += 1;
        Slot::Object { id: next_id, text }
    };
    let id_of = |slot: &Slot| match slot {
        Slot::Object { id, .. } => Some(*id),
        Slot::Mark => None,
    };
    let pop_mark = |stack: &mut Vec<Slot>| -> Option<Vec<Slot>> {
        let at = stack.iter().rposition(|s| matches!(s, Slot::Mark))?;
        let popped = stack.split_off(at + 1);
        stack.pop();
        Some(popped)
    };
    let mut at = 0usize;
    loop {
        let op = *pickle.get(at)?;
        at += 1;
        let arg_start = at;
        let arg: &[u8] = match argument(op)? {
            Arg::None => &[],
            Arg::Fixed(n) => {
                at = at.checked_add(n as usize)?;
                pickle.get(arg_start..at)?
            }
            Arg::Counted(width) => {
                let mut le = [0u8; 8];
                le[..width].copy_from_slice(pickle.get(at..at + width)?);
                let len = usize::try_from(u64::from_le_bytes(le)).ok()?;
                at = at.checked_add(width)?.checked_add(len)?;
                pickle.get(arg_start + width..at)?
            }
            Arg::Lines(n) => {
                for _ in 0..n {
                    at += pickle.get(at..)?.iter().position(|&b| b == b'\n')? + 1;
                }
                pickle.get(arg_start..at - 1)?
            }
        };
        let int = |bytes: &[u8]| {
            let mut le = [0u8; 8];
            le[..bytes.len()].copy_from_slice(bytes);
            u64::from_le_bytes(le)
        };
        match op {
            b'.' => break,
            b'(' => stack.push(Slot::Mark),
            // PROTO, FRAME, BUILD's object stays, READONLY_BUFFER.
            0x80 | 0x95 | 0x98 => {}
            b'0' => {
                stack.pop()?;
            }
            b'1' => {
                pop_mark(&mut stack)?;
            }
            b'2' => stack.push(stack.last()?.clone()),
            // Strings whose text may be a key.
            b'X' | 0x8c | 0x8d => {
                let text = String::from_utf8(arg.to_vec()).ok();
                stack.push(fresh(text));
            }
            b'V' => {
                let text = String::from_utf8(arg.to_vec()).ok();
                stack.push(fresh(text));
            }
            // Other scalars, globals, persistent ids, extension codes, empty containers.
            b'N' | 0x88 | 0x89 | b'I' | b'L' | b'J' | b'K' | b'M' | 0x8a | 0x8b | b'F' | b'G'
            | b'S' | b'T' | b'U' | b'B' | b'C' | 0x8e | 0x96 | b'c' | b'P' | 0x82 | 0x83 | 0x84
            | b'}' | b']' | b')' | 0x8f | 0x97 => stack.push(fresh(None)),
            // Pop a fixed number, push one new object.
            b'Q' | 0x85 => {
                stack.pop()?;
                stack.push(fresh(None));
            }
            0x86 | 0x93 | b'R' | 0x81 => {
                stack.pop()?;
                stack.pop()?;
                stack.push(fresh(None));
            }
            0x87 | 0x92 => {
                stack.pop()?;
                stack.pop()?;
                stack.pop()?;
                stack.push(fresh(None));
            }
            b'b' | b'a' => {
                stack.pop()?;
            }
            // Pop to MARK, push one new object.
            b'l' | b't' | 0x91 | b'i' | b'o' => {
                pop_mark(&mut stack)?;
                stack.push(fresh(None));
            }
            b'd' => {
                let popped = pop_mark(&mut stack)?;
                let slot = fresh(None);
                let id = id_of(&slot)?;
                items.entry(id).or_default().extend(pairs(&popped)?);
                stack.push(slot);
            }
            b'e' | 0x90 => {
                pop_mark(&mut stack)?;
            }
            b's' => {
                let value = stack.pop()?;
                let key = stack.pop()?;
                let target = id_of(stack.last()?)?;
                items
                    .entry(target)
                    .or_default()
                    .extend(pairs(&[key, value])?);
            }
            b'u' => {
                let popped = pop_mark(&mut stack)?;
                let target = id_of(stack.last()?)?;
                items.entry(target).or_default().extend(pairs(&popped)?);
            }
            b'p' | b'q' | b'r' => {
                let idx = match op {
                    b'p' => std::str::from_utf8(arg).ok()?.trim().parse().ok()?,
                    _ => int(arg),
                };
                memo.insert(idx, stack.last()?.clone());
            }
            0x94 => {
                let idx = memo.len() as u64;
                memo.insert(idx, stack.last()?.clone());
            }
            b'g' | b'h' | b'j' => {
                let idx = match op {
                    b'g' => std::str::from_utf8(arg).ok()?.trim().parse().ok()?,
                    _ => int(arg),
                };
                stack.push(memo.get(&idx)?.clone());
            }
            _ => return None,
        }
    }
    let root = id_of(stack.last()?)?;
    let mut first_key_of: HashMap<u32, String> = HashMap::new();
    let mut out = BTreeMap::new();
    for (key, value) in items.remove(&root).unwrap_or_default() {
        let Some(key) = key else { continue };
        match first_key_of.get(&value) {
            Some(original) if *original != key => {
                out.insert(key, original.clone());
            }
            Some(_) => {}
            None => {
                first_key_of.insert(value, key);
            }
        }
    }
    Some(out)
}

/// Key/value pairs from alternating slots, keys with their text when they are strings.
fn pairs(slots: &[Slot]) -> Option<Vec<(Option<String>, u32)>> {
    if !slots.len().is_multiple_of(2) {
        return None;
    }
    slots
        .chunks(2)
        .map(|kv| match (&kv[0], &kv[1]) {
            (Slot::Object { text, .. }, Slot::Object { id, .. }) => Some((text.clone(), *id)),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `pickle.dumps(x, protocol=2)` for a few small values, as CPython writes them.
    const PROTO2_INT: &[u8] = b"\x80\x02K\x05.";
    const PROTO2_DICT: &[u8] = b"\x80\x02}q\x00X\x01\x00\x00\x00aq\x01K\x01s.";
    const PROTO0_LIST: &[u8] = b"(lp0\nI1\naI2\na.";

    #[test]
    fn consecutive_pickles_are_measured_exactly() {
        let mut file = Vec::new();
        for p in [
            PROTO2_INT,
            PROTO2_DICT,
            PROTO0_LIST,
            PROTO2_INT,
            PROTO2_DICT,
        ] {
            file.extend_from_slice(p);
        }
        let pickles = file.len() as u64;
        file.extend_from_slice(&[0xAB; 100]); // raw storage bytes after the pickles
        assert_eq!(
            pickles_extent(&file[..], 5, 1 << 20),
            PickleExtent::Ends(pickles)
        );
        assert_eq!(
            pickles_extent(&file[..], 2, 1 << 20),
            PickleExtent::Ends((PROTO2_INT.len() + PROTO2_DICT.len()) as u64)
        );
    }

    #[test]
    fn a_pickle_longer_than_the_limit_is_reported_as_such() {
        let mut bomb = b"\x80\x02](".to_vec();
        bomb.extend(std::iter::repeat_n(*b"K\x01", 10_000).flatten());
        bomb.extend_from_slice(b"e.");
        assert_eq!(
            pickles_extent(&bomb[..], 1, 1000),
            PickleExtent::Exceeds(1000)
        );
        assert_eq!(
            pickles_extent(&bomb[..], 1, 1 << 20),
            PickleExtent::Ends(bomb.len() as u64)
        );
    }

    #[test]
    fn garbage_and_truncation_are_malformed_not_oversized() {
        assert_eq!(
            pickles_extent(&b"\x80\x02\xff"[..], 1, 100),
            PickleExtent::Malformed
        );
        assert_eq!(
            pickles_extent(&PROTO2_DICT[..5], 1, 100),
            PickleExtent::Malformed
        );
        // A length prefix claiming more bytes than exist.
        assert_eq!(
            pickles_extent(&b"\x80\x02X\xff\xff\xff\xff"[..], 1, 100),
            PickleExtent::Malformed
        );
    }

    #[test]
    fn a_key_whose_value_is_a_memo_reference_is_an_alias() {
        // `pickle.dumps({"model": sd, "model_ema": sd, "other": {}}, protocol=2)` where `sd`
        // is an OrderedDict with one item, as CPython writes it.
        let same = b"\x80\x02}q\x00(X\x05\x00\x00\x00modelq\x01ccollections\nOrderedDict\nq\x02)Rq\x03X\x01\x00\x00\x00aq\x04K\x01sX\t\x00\x00\x00model_emaq\x05h\x03X\x05\x00\x00\x00otherq\x06}q\x07u.";
        let aliases = top_level_aliases(same);
        assert_eq!(aliases.len(), 1, "{aliases:?}");
        assert_eq!(aliases["model_ema"], "model");
        // Two distinct dicts (even with equal contents) are not aliases.
        let distinct = b"\x80\x02}q\x00(X\x05\x00\x00\x00modelq\x01}q\x02X\t\x00\x00\x00model_emaq\x03}q\x04u.";
        assert!(top_level_aliases(distinct).is_empty());
        // Garbage: no aliases, no panic.
        assert!(top_level_aliases(b"\x80\x02h\x09.").is_empty());
        assert!(top_level_aliases(b"").is_empty());
    }
}
