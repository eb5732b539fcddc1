"""Generates test/fixtures/openai_clip_tiny/ (run with /usr/bin/python3 and PyTorch 1.13; seeded, deterministic).

Two TorchScript archives shaped like OpenAI's own CLIP files (what `clip.load("ViT-B/32")` downloads into
~/.cache/clip/ViT-B-32.pt): a `CLIP` module with a `visual` VisionTransformer and a small text tower, built from
a copy of the module structure of github.com/openai/CLIP clip/model.py (names and parameter layout kept exactly),
weights converted to fp16 the way clip.model.convert_weights does (conv / linear / attention in-projection and
`proj` / `text_projection` in fp16; embeddings and LayerNorms stay fp32), with the `input_resolution`,
`context_length` and `vocab_size` tensors of the JIT archives.

- ViT-tiny.pt, torch.jit.script: keeps module attributes (num_heads = 4, LayerNorm eps). Vision: image 224,
  patch 32, width 32, 2 layers, 4 heads, embed 24. Expected embeddings for the first two golden photos
  (goldens.safetensors clip.pixel_values_0).
- ViT-tiny-traced.pt, torch.jit.trace of forward(image, text), as OpenAI's files are: only parameters and
  buffers survive (no num_heads), so heads follow OpenAI's rule width / 64. Vision: image 32, patch 8, width 128,
  1 layer, 2 heads, embed 16. Expected embeddings for two seeded random pixel tensors (stored alongside).

Hostile TorchScript-shaped zips (data.pkl assembled opcode by opcode; code/, constants.pkl and version present so
they look like real archives), each of which a loader must refuse without running anything:
- hostile_system.pt: a module attribute is posix.system("touch /tmp/clipcap_pwned") (GLOBAL + REDUCE).
- hostile_torch_prefix.pt: `__torch__.os.system` called with that command (a `__torch__` name is only ever an
  inert class: constructing it with arguments is refused).
- hostile_setstate.pt: BUILD of a `__torch__` object with a non-dict state (what a custom __setstate__ takes).

expected.safetensors (written by hand: 8-byte little-endian header length, JSON header, raw f32):
  script.image_embeds [2,24] (its pixels: goldens.safetensors clip.pixel_values_0), traced.pixel_values [2,3,32,32],
  traced.image_embeds [2,16]: `model.visual(pixels)` (= encode_image) in float32, on the fp16-rounded weights.
"""
import copy
import json
import os
import pickletools
import struct
import zipfile
from collections import OrderedDict

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.normpath(os.path.join(HERE, "..", "..", "fixtures"))
OUT = os.path.join(FIXTURES, "openai_clip_tiny")


# ---- a copy of OpenAI's clip/model.py ViT structure (names and layout as in the released archives) ----


class LayerNorm(nn.LayerNorm):
    """Subclass torch's LayerNorm to handle fp16 (runs in fp32). F.layer_norm instead of OpenAI's super().forward,
    which TorchScript cannot compile; the same computation."""

    def forward(self, x: torch.Tensor):
        orig_type = x.dtype
        ret = F.layer_norm(x.type(torch.float32), self.normalized_shape, self.weight, self.bias, self.eps)
        return ret.type(orig_type)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor):
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, d_model: int, n_head: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, n_head)
        self.ln_1 = LayerNorm(d_model)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(d_model, d_model * 4)),
                    ("gelu", QuickGELU()),
                    ("c_proj", nn.Linear(d_model * 4, d_model)),
                ]
            )
        )
        self.ln_2 = LayerNorm(d_model)

    def forward(self, x: torch.Tensor):
        # x: (L, N, D), sequence first as in OpenAI's code. No attention mask: the text tower here is a stand-in.
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        x = x + self.mlp(self.ln_2(x))
        return x


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x: torch.Tensor):
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    def __init__(self, input_resolution: int, patch_size: int, width: int, layers: int, heads: int, output_dim: int):
        super().__init__()
        self.input_resolution = input_resolution
        self.output_dim = output_dim
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((input_resolution // patch_size) ** 2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, x: torch.Tensor):
        x = self.conv1(x)  # shape = [*, width, grid, grid]
        x = x.reshape(x.shape[0], x.shape[1], -1)  # shape = [*, width, grid ** 2]
        x = x.permute(0, 2, 1)  # shape = [*, grid ** 2, width]
        zeros = torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype, device=x.device)
        x = torch.cat([self.class_embedding.to(x.dtype) + zeros, x], dim=1)  # shape = [*, grid ** 2 + 1, width]
        x = x + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        x = x.permute(1, 0, 2)  # NLD -> LND
        x = self.transformer(x)
        x = x.permute(1, 0, 2)  # LND -> NLD
        x = self.ln_post(x[:, 0, :])
        x = x @ self.proj
        return x


class CLIP(nn.Module):
    def __init__(self, image_resolution, vision_layers, vision_width, vision_patch_size, vision_heads, embed_dim):
        super().__init__()
        context_length, vocab_size, transformer_width = 8, 64, 16
        self.context_length = context_length
        self.visual = VisionTransformer(
            input_resolution=image_resolution,
            patch_size=vision_patch_size,
            width=vision_width,
            layers=vision_layers,
            heads=vision_heads,
            output_dim=embed_dim,
        )
        self.transformer = Transformer(width=transformer_width, layers=1, heads=2)
        self.vocab_size = vocab_size
        self.token_embedding = nn.Embedding(vocab_size, transformer_width)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(context_length, transformer_width))
        self.ln_final = LayerNorm(transformer_width)
        self.text_projection = nn.Parameter(transformer_width**-0.5 * torch.randn(transformer_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]) * np.log(1 / 0.07))

    def encode_image(self, image: torch.Tensor):
        return self.visual(image)

    def encode_text(self, text: torch.Tensor):
        x = self.token_embedding(text) + self.positional_embedding
        x = x.permute(1, 0, 2)
        x = self.transformer(x)
        x = x.permute(1, 0, 2)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection

    def forward(self, image: torch.Tensor, text: torch.Tensor):
        image_features = self.encode_image(image)
        text_features = self.encode_text(text)
        image_features = image_features / image_features.norm(p=2, dim=1, keepdim=True)
        text_features = text_features / text_features.norm(p=2, dim=1, keepdim=True)
        logits_per_image = self.logit_scale.exp() * image_features @ text_features.t()
        return logits_per_image, logits_per_image.t()


def fp16_names(model: nn.Module):
    """The tensors clip.model.convert_weights makes fp16 (by dotted name)."""
    names = []
    for mname, m in model.named_modules():
        p = f"{mname}." if mname else ""
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            names += [p + "weight"] + ([p + "bias"] if m.bias is not None else [])
        if isinstance(m, nn.MultiheadAttention):
            for a in ["in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight", "in_proj_bias", "bias_k", "bias_v"]:
                if getattr(m, a) is not None:
                    names.append(p + a)
        for a in ["text_projection", "proj"]:
            if hasattr(m, a) and isinstance(getattr(m, a), torch.Tensor):
                names.append(p + a)
    return names


def to_fp16(module: nn.Module, names):
    """Convert the named parameters in place (also works on a ScriptModule: the slot's tensor is replaced)."""
    with torch.no_grad():
        for n in names:
            t = module.get_parameter(n) if isinstance(module, nn.Module) and not isinstance(module, torch.jit.ScriptModule) else None
            if t is None:
                *path, leaf = n.split(".")
                owner = module
                for part in path:
                    owner = getattr(owner, part)
                t = getattr(owner, leaf)
            t.data = t.data.half()


def add_archive_buffers(model: CLIP, image_resolution: int):
    # The JIT archives carry these as tensors (clip.load reads model.input_resolution.item()).
    model.register_buffer("input_resolution", torch.tensor(image_resolution))
    model.register_buffer("context_length_t", torch.tensor(model.context_length))
    model.register_buffer("vocab_size_t", torch.tensor(model.vocab_size))


def rounded_float32(model: nn.Module, names) -> nn.Module:
    """The eager model with the archive's fp16 rounding, computing in float32."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for n in names:
            p = m.get_parameter(n)
            p.data = p.data.half().float()
    return m.float().eval()


def read_safetensors_f32(path, name):
    """One F32 tensor of a safetensors file."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    v = header[name]
    assert v["dtype"] == "F32", v["dtype"]
    a, b = v["data_offsets"]
    return torch.from_numpy(np.frombuffer(data[a:b], dtype="<f4").reshape(v["shape"]).copy())


def write_safetensors(path, tensors, metadata):
    header = {"__metadata__": metadata}
    blobs, at = [], 0
    for k, t in tensors.items():
        b = t.detach().to(torch.float32).contiguous().numpy().astype("<f4").tobytes()
        header[k] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [at, at + len(b)]}
        blobs.append(b)
        at += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def check_archive(path, eager: nn.Module, names):
    """The saved archive holds the eager model's parameters, the fp16 ones as fp16."""
    loaded = torch.jit.load(path)
    sd = dict(loaded.state_dict())
    for k, v in eager.state_dict().items():
        want = v.half() if k in names else v
        assert sd[k].dtype == want.dtype, (k, sd[k].dtype, want.dtype)
        assert torch.equal(sd[k], want), k
    with zipfile.ZipFile(path) as z:
        entries = z.namelist()
    assert any(e.endswith("/constants.pkl") for e in entries) and any("/code/" in e for e in entries)


MARKER = "/tmp/clipcap_pwned"


def sbu(text: str) -> bytes:
    """SHORT_BINUNICODE."""
    b = text.encode()
    return b"\x8c" + bytes([len(b)]) + b


def module_with(attr_opcodes: bytes) -> bytes:
    """data.pkl of a `__torch__.CLIP` module whose one attribute `visual` is built by attr_opcodes."""
    return b"\x80\x02c__torch__\nCLIP\n)\x81}(" + sbu("training") + b"\x89" + sbu("visual") + attr_opcodes + b"ub."


def write_hostile(name: str, data_pkl: bytes):
    path = os.path.join(OUT, name)
    root = name[: -len(".pt")]
    entries = [
        ("data.pkl", data_pkl),
        ("code/__torch__.py", b"class CLIP(Module):\n  __parameters__ = []\n"),
        ("constants.pkl", b"\x80\x02)."),
        ("version", b"3\n"),
    ]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for entry, data in entries:
            z.writestr(zipfile.ZipInfo(f"{root}/{entry}", date_time=(1980, 1, 1, 0, 0, 0)), data)


def write_hostile_files():
    cmd = sbu(f"touch {MARKER}")
    write_hostile("hostile_system.pt", module_with(b"cposix\nsystem\n" + cmd + b"\x85R"))
    write_hostile("hostile_torch_prefix.pt", module_with(b"c__torch__.os\nsystem\n" + cmd + b"\x85R"))
    write_hostile("hostile_setstate.pt", module_with(b"c__torch__\nVisionTransformer\n)\x81" + cmd + b"\x85b"))
    # Each data.pkl is a well-formed pickle (pickletools only parses, it never executes).
    for f in ["hostile_system.pt", "hostile_torch_prefix.pt", "hostile_setstate.pt"]:
        with zipfile.ZipFile(os.path.join(OUT, f)) as z:
            pickletools.dis(z.read(f[: -len(".pt")] + "/data.pkl"), out=open(os.devnull, "w"))


def main():
    os.makedirs(OUT, exist_ok=True)
    expected = {}
    meta = {"generator": "test/weights/data/make_openai_clip.py", "torch": torch.__version__}

    # --- scripted: attributes survive ---
    torch.manual_seed(0)
    m = CLIP(image_resolution=224, vision_layers=2, vision_width=32, vision_patch_size=32, vision_heads=4, embed_dim=24)
    add_archive_buffers(m, 224)
    m.eval()
    names = fp16_names(m)
    ref = rounded_float32(m, names)
    half = copy.deepcopy(m)
    to_fp16(half, names)
    path = os.path.join(OUT, "ViT-tiny.pt")
    torch.jit.script(half).save(path)
    check_archive(path, m, names)
    pixels = read_safetensors_f32(os.path.join(FIXTURES, "goldens.safetensors"), "clip.pixel_values_0")
    with torch.no_grad():
        expected["script.image_embeds"] = ref.visual(pixels)

    # --- traced, as OpenAI's archives: parameters and buffers only ---
    torch.manual_seed(1)
    m = CLIP(image_resolution=32, vision_layers=1, vision_width=128, vision_patch_size=8, vision_heads=2, embed_dim=16)
    add_archive_buffers(m, 32)
    m.eval()
    names = fp16_names(m)
    ref = rounded_float32(m, names)
    image = torch.randn(2, 3, 32, 32)
    text = torch.randint(0, 64, (2, 8))
    traced = torch.jit.trace(copy.deepcopy(m), (image, text), check_trace=False)
    to_fp16(traced, names)
    path = os.path.join(OUT, "ViT-tiny-traced.pt")
    traced.save(path)
    check_archive(path, m, names)
    with torch.no_grad():
        expected["traced.pixel_values"] = image
        expected["traced.image_embeds"] = ref.visual(image)

    write_safetensors(os.path.join(OUT, "expected.safetensors"), expected, meta)
    write_hostile_files()
    for f in sorted(os.listdir(OUT)):
        print(f, os.path.getsize(os.path.join(OUT, f)))


if __name__ == "__main__":
    main()
