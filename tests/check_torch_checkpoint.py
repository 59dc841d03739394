"""Reads a checkpoint written by `disa convert --to official --out x.pth` with CPython's own zip
and pickle modules (no PyTorch needed) and compares every tensor with a safetensors file of the
same state dict, bit for bit. Where PyTorch is importable it also runs `torch.load(...,
weights_only=True)`, the official code's loader, on the same file.

usage: check_torch_checkpoint.py CHECKPOINT.pth REFERENCE.safetensors
Prints one summary line; exits non-zero (with the reason) on any mismatch.
"""

import array
import collections
import json
import math
import pickle
import struct
import sys
import zipfile


def rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks, *metadata):
    numel = math.prod(size)
    expected = [math.prod(size[d + 1 :]) for d in range(len(size))]
    assert list(stride) == expected, f"non-contiguous strides {stride} for size {size}"
    assert requires_grad is False and len(hooks) == 0
    return tuple(size), storage[offset : offset + numel]


class CheckpointUnpickler(pickle.Unpickler):
    """Allows only the globals `torch.load(weights_only=True)` allows for a state dict."""

    GLOBALS = {
        ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor_v2,
        ("torch", "FloatStorage"): "FloatStorage",
        ("collections", "OrderedDict"): collections.OrderedDict,
    }

    def __init__(self, file, archive, root):
        super().__init__(file)
        self.archive, self.root = archive, root

    def find_class(self, module, name):
        if (module, name) not in self.GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return self.GLOBALS[(module, name)]

    def persistent_load(self, pid):
        kind, storage_type, key, location, numel = pid
        assert (kind, storage_type, location) == ("storage", "FloatStorage", "cpu"), pid
        data = self.archive.read(f"{self.root}/data/{key}")
        assert len(data) == 4 * numel, f"storage {key}: {len(data)} bytes for {numel} floats"
        values = array.array("f")
        values.frombytes(data)
        return values


def read_safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", f"{name}: {info['dtype']}"
        start, end = info["data_offsets"]
        values = array.array("f")
        values.frombytes(data[start:end])
        tensors[name] = (tuple(info["shape"]), values)
    return tensors


def main(checkpoint, reference_path):
    reference = read_safetensors(reference_path)
    with zipfile.ZipFile(checkpoint) as archive:
        names = archive.namelist()
        root = names[0].split("/")[0]
        assert archive.read(f"{root}/version").strip() == b"3"
        assert archive.read(f"{root}/byteorder") == b"little"
        with open(checkpoint, "rb") as raw:
            for info in archive.infolist():
                assert info.compress_type == zipfile.ZIP_STORED, info.filename
                if "/data/" in info.filename:
                    # Local header: 30 bytes, then the name and the extra field.
                    raw.seek(info.header_offset + 26)
                    name_len, extra_len = struct.unpack("<HH", raw.read(4))
                    start = info.header_offset + 30 + name_len + extra_len
                    assert start % 64 == 0, f"{info.filename} starts at {start}"
        with archive.open(f"{root}/data.pkl") as f:
            checkpoint_dicts = CheckpointUnpickler(f, archive, root).load()
    assert set(checkpoint_dicts) == {"model", "model_ema"}, list(checkpoint_dicts)
    for key, state_dict in checkpoint_dicts.items():
        assert isinstance(state_dict, collections.OrderedDict), type(state_dict)
        assert set(state_dict) == set(reference), set(state_dict) ^ set(reference)
        for name, (shape, values) in state_dict.items():
            ref_shape, ref_values = reference[name]
            assert shape == ref_shape, f"{key}.{name}: shape {shape} vs {ref_shape}"
            assert values.tobytes() == ref_values.tobytes(), f"{key}.{name}: values differ"
    summary = f"pickle+zip: {len(reference)} tensors under model and model_ema, bit-equal"
    try:
        import torch
    except ImportError:
        print(summary + "; torch not installed, torch.load not run")
        return
    loaded = torch.load(checkpoint, map_location="cpu", weights_only=True)
    for key in ("model", "model_ema"):
        for name, (shape, values) in reference.items():
            t = loaded[key][name]
            assert t.dtype == torch.float32 and tuple(t.shape) == shape, name
            assert t.contiguous().numpy().tobytes() == values.tobytes(), f"torch: {key}.{name}"
    print(summary + f"; torch {torch.__version__} torch.load(weights_only=True) agrees")


if __name__ == "__main__":
    main(*sys.argv[1:])
