"""Generates the small pickles in this folder (python3 make_pickles.py; no torch needed).

torch's pickling names are imitated with stand-in modules, so the files contain exactly the opcodes and
GLOBAL names torch.save / pickle.dump of torch tensors produce. The tests (test/weights/torch.test.ts)
state what each file must load as, or how it must be refused.
"""
import collections
import io
import os
import pickle
import struct
import sys
import types

HERE = os.path.dirname(os.path.abspath(__file__))

# --- stand-ins for the torch names -------------------------------------------------------------------
torch = types.ModuleType("torch")
torch_utils = types.ModuleType("torch._utils")
torch_storage = types.ModuleType("torch.storage")
sys.modules.update({"torch": torch, "torch._utils": torch_utils, "torch.storage": torch_storage})


def _named(mod, fn):
    fn.__module__ = mod.__name__
    fn.__qualname__ = fn.__name__
    setattr(mod, fn.__name__, fn)
    return fn


def _rebuild_tensor_v2(*args):
    raise RuntimeError


def _load_from_bytes(b):
    raise RuntimeError


_named(torch_utils, _rebuild_tensor_v2)
_named(torch_storage, _load_from_bytes)


class FloatStorage:
    pass


FloatStorage.__module__ = "torch"
torch.FloatStorage = FloatStorage


class Storage:
    """Pickles as torch.storage._load_from_bytes(<legacy torch.save blob>), like a real storage in pickle.dump."""

    def __init__(self, values, key="140000"):
        self.values = values
        self.key = key

    def legacy_blob(self, numel_override=None):
        out = io.BytesIO()
        for obj in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True,
                                                   "type_sizes": {"short": 2, "int": 4, "long": 4}}):
            pickle.dump(obj, out, protocol=2)
        storage = self

        class P(pickle.Pickler):
            def persistent_id(self, obj):
                if obj is storage:
                    return ("storage", FloatStorage, storage.key, "cpu", len(storage.values), None)
                return None

        P(out, protocol=2).dump(self)
        pickle.dump([self.key], out, protocol=2)
        out.write(struct.pack("<q", len(self.values) if numel_override is None else numel_override))
        out.write(struct.pack(f"<{len(self.values)}f", *self.values))
        return out.getvalue()

    def __reduce__(self):
        return (_load_from_bytes, (self.legacy_blob(),))


class Tensor:
    def __init__(self, storage, offset, size, stride, state=None):
        self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())
        self.state = state

    def __reduce__(self):
        if self.state is not None:
            return (_rebuild_tensor_v2, self.args, self.state)
        return (_rebuild_tensor_v2, self.args)


def write(name, data):
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(data)


# --- plain values ------------------------------------------------------------------------------------
shared = ["shared"]
cyclic = [1]
cyclic.append(cyclic)
values = {
    "ints": [0, 1, -1, 255, 256, 65535, 65536, -(2**31), 2**31 - 1, 2**53 - 1, 2**70, -(2**70)],
    "floats": [0.5, -2.25, 1e-300, float("inf")],
    "strs": ["", "ascii", "Ünïcödé ✓", "line\nbreak"],
    "consts": [None, True, False],
    "tuple": (1, "a", (2, 3)),
    "set": {1, 2, 3},
    "frozenset": frozenset(["x"]),
    "int_keys": {1: "one", 2: "two"},
    "tuple_keys": {(1, 2): "pair"},
    "nested": {"a": {"b": [shared, shared]}},
    "__proto__": "just a key",
    "bytes": b"\x00\x01\xff",
    "cyclic": cyclic,
}
write("values_p0.pkl", pickle.dumps({k: v for k, v in values.items() if k not in ("bytes",)}, protocol=0))
write("values_p2.pkl", pickle.dumps(values, protocol=2))
write("values_p5.pkl", pickle.dumps(values, protocol=5))

# --- tensors through _load_from_bytes ----------------------------------------------------------------
st = Storage([float(i) for i in range(12)])
write(
    "strided_features.pkl",
    pickle.dumps(
        {
            # a (3, 2) view at offset 1 with strides (1, 4): element [i][j] = storage[1 + i + 4 j]
            "view": Tensor(st, 1, (3, 2), (1, 4)),
            # the same storage, whole and contiguous (shared: the storage pickles once, then by memo)
            "whole": Tensor(st, 0, (12,), (1,)),
            "scalar": Tensor(st, 5, (), ()),
            "empty": Tensor(st, 0, (0, 3), (3, 1)),
        },
        protocol=4,
    ),
)

# --- hostile and malformed ---------------------------------------------------------------------------
write("out_of_bounds_view.pkl", pickle.dumps({"t": Tensor(Storage([1.0, 2.0, 3.0, 4.0]), 0, (3,), (2,))}, protocol=4))


class BadCountStorage(Storage):
    def __reduce__(self):
        return (_load_from_bytes, (self.legacy_blob(numel_override=7),))


write("bad_storage_count.pkl", pickle.dumps({"t": Tensor(BadCountStorage([1.0, 2.0]), 0, (2,), (1,))}, protocol=4))
write("eval_global.pkl", pickle.dumps({"f": eval}, protocol=4))
write("build_on_tensor.pkl", pickle.dumps({"t": Tensor(Storage([1.0]), 0, (1,), (1,), state={"x": 1})}, protocol=4))
# Hand-written: calling a storage type (allowed as a type only), a persistent id in a plain pickle,
# the extension registry, an out-of-band buffer, a truncated pickle and an unknown opcode.
write("call_storage_type.pkl", b"\x80\x02ctorch\nFloatStorage\n)R.")
write("persistent_id.pkl", b"\x80\x02X\x01\x00\x00\x00aQ.")
write("ext1.pkl", b"\x80\x02\x82\x01.")
write("next_buffer.pkl", b"\x80\x05\x97.")
write("truncated.pkl", pickle.dumps(values, protocol=2)[:40])
write("unknown_opcode.pkl", b"\x80\x02\xff.")

# --- hostile torch.save zip archives -----------------------------------------------------------------
import zipfile  # noqa: E402


class ZipStorage:
    def __init__(self, key, numel):
        self.key = key
        self.numel = numel


def zip_data_pkl(numel, size):
    st = ZipStorage("0", numel)

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, ZipStorage):
                return ("storage", FloatStorage, obj.key, "cpu", obj.numel)
            return None

    out = io.BytesIO()
    P(out, protocol=2).dump({"w": Tensor(st, 0, (size,), (1,))})
    return out.getvalue()


def write_zip(name, entries):
    with zipfile.ZipFile(os.path.join(HERE, name), "w", compression=zipfile.ZIP_STORED) as z:
        for n, data in entries:
            z.writestr(n, data)


six = struct.pack("<6f", 0.5, 1.5, 2.5, 3.5, 4.5, 5.5)
write_zip("zip_ok.pt", [("archive/data.pkl", zip_data_pkl(6, 6)), ("archive/data/0", six),
                        ("archive/version", b"3\n"), ("archive/byteorder", b"little")])
write_zip("zip_wrong_storage_size.pt", [("archive/data.pkl", zip_data_pkl(100, 6)), ("archive/data/0", six)])
write_zip("zip_missing_storage.pt", [("archive/data.pkl", zip_data_pkl(6, 6))])
write_zip("zip_big_endian.pt", [("archive/data.pkl", zip_data_pkl(6, 6)), ("archive/data/0", six),
                                ("archive/byteorder", b"big")])
write_zip("zip_torchscript.pt", [("archive/data.pkl", zip_data_pkl(6, 6)), ("archive/constants.pkl", b"\x80\x02)."),
                                 ("archive/code/__torch__/model.py", b"")])
write_zip("zip_no_pkl.pt", [("readme.txt", b"hello")])
