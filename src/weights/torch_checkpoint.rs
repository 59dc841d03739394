//! Writing a PyTorch checkpoint (`torch.save`'s zip format), so the official code can
//! `torch.load` a model trained or converted here, as it loads `checkpoint-last.pth`.
//!
//! The archive holds, under `archive/`:
//! - `data.pkl`: a protocol-2 pickle of `{key: OrderedDict(name → tensor)}` for every top-level
//!   key. Each tensor is `torch._utils._rebuild_tensor_v2(storage, 0, size, stride, False,
//!   OrderedDict())`, and each storage is a persistent id `('storage', torch.FloatStorage,
//!   '<n>', 'cpu', numel)`. These are the globals `torch.load(weights_only=True)` allows.
//! - `data/<n>`: the raw little-endian f32 values of storage `n`, stored uncompressed and
//!   aligned to 64 bytes as `torch.save` does.
//! - `version` (`3`), `byteorder` (`little`), `.format_version`, `.storage_alignment`.
//!
//! Every top-level key refers to the same storages (as `torch.save` writes tensors shared
//! between dicts), so `{'model', 'model_ema'}` of one state dict costs one copy on disk.

use super::{HostTensor, WeightMap};
use crate::error::{DisaError, Result};
use std::io::{Seek, Write};
use std::path::Path;

/// Pickle opcodes used (protocol 2).
mod op {
    pub const PROTO: u8 = 0x80;
    pub const EMPTY_DICT: u8 = b'}';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const MARK: u8 = b'(';
    pub const TUPLE: u8 = b't';
    pub const SETITEMS: u8 = b'u';
    pub const BINUNICODE: u8 = b'X';
    pub const GLOBAL: u8 = b'c';
    pub const BININT: u8 = b'J';
    pub const LONG1: u8 = 0x8a;
    pub const NEWFALSE: u8 = 0x89;
    pub const REDUCE: u8 = b'R';
    pub const BINPERSID: u8 = b'Q';
    pub const BINPUT: u8 = b'q';
    pub const BINGET: u8 = b'h';
    pub const STOP: u8 = b'.';
}

/// A minimal protocol-2 pickle writer: only what a state dict of tensors needs.
#[derive(Default)]
struct Pickle(Vec<u8>);

impl Pickle {
    fn op(&mut self, code: u8) {
        self.0.push(code);
    }
    fn string(&mut self, s: &str) {
        self.op(op::BINUNICODE);
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }
    fn global(&mut self, module: &str, name: &str) {
        self.op(op::GLOBAL);
        self.0
            .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    }
    fn int(&mut self, v: u64) {
        if let Ok(small) = i32::try_from(v) {
            self.op(op::BININT);
            self.0.extend_from_slice(&small.to_le_bytes());
        } else {
            // LONG1: little-endian two's complement; nine bytes keep the sign bit clear.
            self.op(op::LONG1);
            self.0.push(9);
            self.0.extend_from_slice(&v.to_le_bytes());
            self.0.push(0);
        }
    }
    fn int_tuple(&mut self, values: &[usize]) {
        if values.is_empty() {
            return self.op(op::EMPTY_TUPLE);
        }
        self.op(op::MARK);
        for &v in values {
            self.int(v as u64);
        }
        self.op(op::TUPLE);
    }
    fn empty_ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.op(op::EMPTY_TUPLE);
        self.op(op::REDUCE);
    }
    /// `_rebuild_tensor_v2` of a contiguous f32 tensor over the whole of storage `key`.
    fn tensor(&mut self, key: &str, shape: &[usize]) {
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.op(op::MARK);
        self.op(op::MARK);
        self.string("storage");
        self.global("torch", "FloatStorage");
        self.string(key);
        self.string("cpu");
        self.int(shape.iter().product::<usize>() as u64);
        self.op(op::TUPLE);
        self.op(op::BINPERSID);
        self.int(0); // storage offset
        self.int_tuple(shape);
        // Row-major strides, as `torch.Tensor.stride()` of a contiguous tensor.
        let mut strides = vec![1usize; shape.len()];
        for d in (0..shape.len().saturating_sub(1)).rev() {
            strides[d] = strides[d + 1] * shape[d + 1];
        }
        self.int_tuple(&strides);
        self.op(op::NEWFALSE); // requires_grad
        self.empty_ordered_dict(); // backward hooks
        self.op(op::TUPLE);
        self.op(op::REDUCE);
    }
}

/// The pickle for `{key: OrderedDict(name → tensor)}`; storage `n` is the `n`-th tensor of
/// `state_dict` in its (sorted) order.
fn pickle_state_dicts(state_dict: &WeightMap, keys: &[&str]) -> Vec<u8> {
    let mut p = Pickle::default();
    p.op(op::PROTO);
    p.0.push(2);
    p.op(op::EMPTY_DICT);
    p.op(op::MARK);
    for (i, key) in keys.iter().enumerate() {
        p.string(key);
        if i > 0 {
            // The same dict object again, as `torch.save({'model': sd, 'model_ema': sd})`
            // writes it: a memo reference.
            p.op(op::BINGET);
            p.0.push(0);
            continue;
        }
        p.empty_ordered_dict();
        p.op(op::MARK);
        for (n, (name, tensor)) in state_dict.tensors.iter().enumerate() {
            p.string(name);
            p.tensor(&n.to_string(), &tensor.shape);
        }
        p.op(op::SETITEMS);
        p.op(op::BINPUT);
        p.0.push(0);
    }
    p.op(op::SETITEMS);
    p.op(op::STOP);
    p.0
}

/// Writes `state_dict` as a PyTorch checkpoint holding it under each of `keys` (for MAR:
/// `["model", "model_ema"]`, the layout of the official `checkpoint-last.pth`).
///
/// Streams to `writer`: apart from the pickle (a few bytes per tensor) nothing is copied.
pub fn write_torch_checkpoint<W: Write + Seek>(
    writer: W,
    state_dict: &WeightMap,
    keys: &[&str],
) -> Result<W> {
    write_named(writer, state_dict, keys, "PyTorch checkpoint")
}

/// [`write_torch_checkpoint`], naming `target` when writing fails.
fn write_named<W: Write + Seek>(
    writer: W,
    state_dict: &WeightMap,
    keys: &[&str],
    target: &str,
) -> Result<W> {
    if keys.is_empty() {
        return Err(DisaError::InvalidSetting(
            "a checkpoint needs at least one top-level key".into(),
        ));
    }
    write_archive(writer, state_dict, keys).map_err(|source| DisaError::Io {
        path: target.to_string(),
        source,
    })
}

fn write_archive<W: Write + Seek>(
    writer: W,
    state_dict: &WeightMap,
    keys: &[&str],
) -> std::io::Result<W> {
    use zip::write::SimpleFileOptions;
    let mut zip = zip::ZipWriter::new(writer);
    let small = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let entry = |zip: &mut zip::ZipWriter<W>, name: &str, bytes: &[u8]| {
        zip.start_file(format!("archive/{name}"), small)?;
        zip.write_all(bytes)
    };
    entry(&mut zip, "data.pkl", &pickle_state_dicts(state_dict, keys))?;
    entry(&mut zip, ".format_version", b"1")?;
    entry(&mut zip, ".storage_alignment", b"64")?;
    entry(&mut zip, "byteorder", b"little")?;
    for (n, tensor) in state_dict.tensors.values().enumerate() {
        let options = small
            .with_alignment(64)
            .large_file(tensor.values.len() as u64 * 4 >= u32::MAX as u64);
        zip.start_file(format!("archive/data/{n}"), options)?;
        write_values(&mut zip, tensor)?;
    }
    entry(&mut zip, "version", b"3\n")?;
    Ok(zip.finish()?)
}

/// A tensor's values as little-endian f32, in 64 KiB chunks.
fn write_values(out: &mut impl Write, tensor: &HostTensor) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1 << 16);
    for chunk in tensor.values.chunks(1 << 14) {
        buf.clear();
        for v in chunk {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        out.write_all(&buf)?;
    }
    Ok(())
}

/// [`write_torch_checkpoint`] to a file. It is written beside the target and renamed into
/// place, so a failed write leaves an existing file untouched and no partial file behind.
pub fn save_torch_checkpoint(path: &Path, state_dict: &WeightMap, keys: &[&str]) -> Result<()> {
    let target = path.display().to_string();
    super::atomic::write_atomic_with(path, |file| {
        let mut out = std::io::BufWriter::new(file);
        write_named(&mut out, state_dict, keys, &target).map_err(std::io::Error::other)?;
        out.flush()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_ints_use_long1_with_a_clear_sign_bit() {
        let mut p = Pickle::default();
        p.int(7);
        assert_eq!(p.0, [op::BININT, 7, 0, 0, 0]);
        let mut p = Pickle::default();
        p.int(1 << 33);
        assert_eq!(p.0, [op::LONG1, 9, 0, 0, 0, 0, 2, 0, 0, 0, 0]);
    }

    #[test]
    fn strides_are_row_major() {
        let mut with = Pickle::default();
        with.int_tuple(&[12, 4, 1]);
        let mut p = Pickle::default();
        p.tensor("0", &[2, 3, 4]);
        let at = p.0.windows(with.0.len()).position(|w| w == with.0);
        assert!(at.is_some(), "strides (12, 4, 1) in the pickle");
    }

    #[test]
    fn a_failed_save_keeps_the_old_file_and_leaves_no_partial_one() {
        let dir = std::env::temp_dir().join(format!("disa-torch-save-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("checkpoint.pth");
        let mut weights = WeightMap::default();
        weights.tensors.insert(
            "w".into(),
            HostTensor {
                shape: vec![2, 2],
                values: vec![1.0, 2.0, 3.0, 4.0],
            },
        );
        save_torch_checkpoint(&path, &weights, &["model"]).unwrap();
        let first = std::fs::read(&path).unwrap();
        assert!(first.starts_with(b"PK"), "a zip archive");
        // No top-level key: refused after the partial file was opened.
        assert!(save_torch_checkpoint(&path, &weights, &[]).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), first, "old file untouched");
        assert!(!dir.join("checkpoint.pth.partial").exists());
        // A folder that does not exist is an I/O error naming the file.
        let err = save_torch_checkpoint(&dir.join("no/such.pth"), &weights, &["model"]);
        assert!(err.unwrap_err().to_string().contains("such.pth"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
