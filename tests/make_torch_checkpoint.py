"""Writes a `torch.save`-style zip checkpoint without PyTorch, for the bad-input tests: the
state dict of a safetensors file (f32 tensors) under `model` and `model_ema`, with tensors
added or replaced by huge zero-filled ones that deflate to almost nothing (a compression bomb).
The pickle names the same globals PyTorch writes (`torch._utils._rebuild_tensor_v2`,
`torch.FloatStorage`), made importable here by stand-in modules.

usage: make_torch_checkpoint.py OUT.pth MODEL.safetensors [--drop-all] [--distinct] [NAME=VALUES ...]
  NAME=VALUES  a 1-D f32 tensor of VALUES zeros under NAME (replacing the model's own, if any)
  --drop-all   keep none of the model's tensors, only the NAME=VALUES ones
  --distinct   `model_ema` a dict of its own (sharing the tensors), not `model`'s dict again
"""

import collections
import io
import json
import math
import pickle
import struct
import sys
import types
import zipfile

torch = types.ModuleType("torch")
torch_utils = types.ModuleType("torch._utils")


def _rebuild_tensor_v2(*args):
    raise AssertionError("only pickled here, never called")


_rebuild_tensor_v2.__module__ = "torch._utils"
torch_utils._rebuild_tensor_v2 = _rebuild_tensor_v2


class FloatStorage:
    pass


FloatStorage.__module__ = "torch"
torch.FloatStorage = FloatStorage
torch._utils = torch_utils
sys.modules["torch"] = torch
sys.modules["torch._utils"] = torch_utils


class Storage:
    def __init__(self, key, numel):
        self.key, self.numel = key, numel


class Tensor:
    def __init__(self, storage, shape):
        self.storage, self.shape = storage, tuple(shape)

    def __reduce__(self):
        stride = tuple(
            int(math.prod(self.shape[d + 1 :])) for d in range(len(self.shape))
        )
        hooks = collections.OrderedDict()
        return (_rebuild_tensor_v2, (self.storage, 0, self.shape, stride, False, hooks))


class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", FloatStorage, obj.key, "cpu", obj.numel)
        return None


def read_safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, meta in header.items():
        if name == "__metadata__" or meta["dtype"] != "F32":
            continue
        start, end = meta["data_offsets"]
        out[name] = (meta["shape"], data[start:end])
    return out


def main():
    out, model, *rest = sys.argv[1:]
    drop_all = "--drop-all" in rest
    extra = dict(a.split("=") for a in rest if not a.startswith("--"))
    tensors = {} if drop_all else read_safetensors(model)
    for name, values in extra.items():
        tensors[name] = ([int(values)], None)
    state = collections.OrderedDict()
    payloads = []
    for i, (name, (shape, data)) in enumerate(sorted(tensors.items())):
        numel = int(math.prod(shape))
        state[name] = Tensor(Storage(str(i), numel), shape)
        payloads.append((str(i), numel, data))
    buf = io.BytesIO()
    # `{"model": sd, "model_ema": sd}`: one OrderedDict under both keys (a memo reference),
    # or with --distinct two dicts sharing tensors, as `model.state_dict()` twice gives.
    ema = collections.OrderedDict(state) if "--distinct" in rest else state
    Pickler(buf, protocol=2).dump({"model": state, "model_ema": ema})
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/version", "3\n")
        for key, numel, data in payloads:
            with z.open(f"archive/data/{key}", "w", force_zip64=True) as f:
                if data is not None:
                    f.write(data)
                    continue
                zeros, left = bytes(1 << 24), numel * 4
                while left:
                    k = min(left, len(zeros))
                    f.write(zeros[:k])
                    left -= k


if __name__ == "__main__":
    main()
