#!/usr/bin/env python3
"""Export the full-size fixture-rule models to ONNX for the onnxruntime-node peer (dev-only, bench time only).

Usage: python3 bench/export_onnx.py --out DIR [--threads 2] [--smoke] [--fixtures test/fixtures]

Writes into DIR (a cache: never committed, never read by tests), each file via a temporary name + rename:
- clip_vision.onnx: pixel_values (N, 3, 224, 224) -> image_embeds (N, 512): CLIP ViT-B/32 vision tower +
  visual_projection (bench/fullsize_torch.py ClipVision);
- mapper.onnx: clip_embedding (N, 512) -> prefix (N, 10, 768): the ClipCap MLP mapper;
- gpt2_kv.onnx: one merged KV-cache GPT-2 graph, as Hugging Face's merged decoder exports take both the first
  call and the cached steps: inputs inputs_embeds (B, T0, 768) and input_ids (B, T1) (the new positions are
  inputs_embeds followed by wte[input_ids]; the first call passes the prefix and (B, 0) ids, later calls (B, 0,
  768) embeddings and the last token), past_key_i / past_value_i (B, 12, P, 64) per layer (P = 0 on the first
  call); outputs logits (B, 50257) of the last position and present_key_i / present_value_i (B, 12, P + T, 64).
Opset 17, fp32, weights by the fixture rule (the same models the TypeScript benches build); dynamic batch and
sequence axes. manifest.json records the torch version and the rule so a stale cache is rebuilt.
"""
import json
import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fullsize_torch as ft  # noqa: E402

OPSET = 17
# Bump when the exported graphs change: bench/ort_bench.mjs re-exports when the manifest differs.
EXPORT_VERSION = 1


def export(torch, module, args, path, input_names, output_names, dynamic_axes):
    tmp = path + ".tmp"
    with torch.no_grad():
        torch.onnx.export(
            module,
            args,
            tmp,
            opset_version=OPSET,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    os.replace(tmp, path)
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.0f} MB)", file=sys.stderr)


def main():
    ap = ft.bench_arg_parser(runs=1, smoke_help="tiny models (same rule)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(["--threads", "2", *sys.argv[1:]])
    torch, rule_diff = ft.start_torch(args)
    nn = torch.nn
    F = torch.nn.functional
    os.makedirs(args.out, exist_ok=True)

    clip = ft.build_clip(torch, smoke=args.smoke)
    mapper, gpt = ft.build_captioner(torch, smoke=args.smoke)
    cfg = gpt.cfg
    L, H, E = cfg["n_layer"], cfg["n_head"], cfg["n_embd"]
    D = E // H

    class Vision(nn.Module):
        def forward(self, pixel_values):
            return clip(pixel_values)

    class Mapper(nn.Module):
        def forward(self, clip_embedding):
            return mapper(clip_embedding)

    class Gpt2Kv(nn.Module):
        """forward_kv with the causal mask always applied (it is all-true for one new position, so the
        cached steps compute the same values) and the token embedding inside the graph."""

        def forward(self, inputs_embeds, input_ids, *past_flat):
            x = torch.cat([inputs_embeds, F.embedding(input_ids, gpt.wte)], 1)  # (B, T, E)
            B, T = x.shape[0], x.shape[1]
            P = past_flat[0].shape[2]
            h = x + gpt.wpe[P : P + T]
            mask = gpt.causal[:, :, P : P + T, : P + T]
            neg = torch.tensor(torch.finfo(h.dtype).min, dtype=h.dtype)
            present = []
            for i, blk in enumerate(gpt.blocks):
                a = F.layer_norm(h, (E,), blk["ln_1.weight"], blk["ln_1.bias"], cfg["eps"])
                qkv = gpt.conv1d(a, blk["attn.c_attn.weight"], blk["attn.c_attn.bias"])
                q, k, v = (t.reshape(B, T, H, D).permute(0, 2, 1, 3) for t in qkv.split(E, dim=2))
                k = torch.cat((past_flat[2 * i], k), dim=2)
                v = torch.cat((past_flat[2 * i + 1], v), dim=2)
                present += [k, v]
                w = torch.matmul(q, k.transpose(-1, -2)) / (D**0.5)
                w = torch.where(mask, w, neg).softmax(dim=-1)
                o = torch.matmul(w, v).permute(0, 2, 1, 3).reshape(B, T, E)
                h = h + gpt.conv1d(o, blk["attn.c_proj.weight"], blk["attn.c_proj.bias"])
                m = F.layer_norm(h, (E,), blk["ln_2.weight"], blk["ln_2.bias"], cfg["eps"])
                m = gpt.conv1d(m, blk["mlp.c_fc.weight"], blk["mlp.c_fc.bias"])
                m = 0.5 * m * (1.0 + torch.tanh((2.0 / 3.141592653589793) ** 0.5 * (m + 0.044715 * torch.pow(m, 3.0))))
                h = h + gpt.conv1d(m, blk["mlp.c_proj.weight"], blk["mlp.c_proj.bias"])
            h = F.layer_norm(h[:, -1, :], (E,), gpt.ln_f_w, gpt.ln_f_b, cfg["eps"])
            return (F.linear(h, gpt.wte), *present)

    size = clip.cfg["image"]
    export(
        torch,
        Vision(),
        (torch.zeros(2, 3, size, size),),
        os.path.join(args.out, "clip_vision.onnx"),
        ["pixel_values"],
        ["image_embeds"],
        {"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}},
    )
    d_in = mapper.l0[0].shape[1]
    export(
        torch,
        Mapper(),
        (torch.zeros(2, d_in),),
        os.path.join(args.out, "mapper.onnx"),
        ["clip_embedding"],
        ["prefix"],
        {"clip_embedding": {0: "batch"}, "prefix": {0: "batch"}},
    )
    past_names = [n for i in range(L) for n in (f"past_key_{i}", f"past_value_{i}")]
    present_names = [n for i in range(L) for n in (f"present_key_{i}", f"present_value_{i}")]
    # Traced with a non-empty past and two new positions so that no size is specialized to 0 or 1.
    B, T0, P = 2, 2, 3
    sample = (
        torch.zeros(B, T0, E),
        torch.zeros(B, 1, dtype=torch.int64),
        *[torch.zeros(B, H, P, D) for _ in past_names],
    )
    axes = {"inputs_embeds": {0: "batch", 1: "embeds_len"}, "input_ids": {0: "batch", 1: "ids_len"}, "logits": {0: "batch"}}
    for n in past_names:
        axes[n] = {0: "batch", 2: "past_len"}
    for n in present_names:
        axes[n] = {0: "batch", 2: "total_len"}
    export(
        torch,
        Gpt2Kv(),
        sample,
        os.path.join(args.out, "gpt2_kv.onnx"),
        ["inputs_embeds", "input_ids", *past_names],
        ["logits", *present_names],
        axes,
    )
    manifest = {
        "export_version": EXPORT_VERSION,
        "torch": torch.__version__,
        "opset": OPSET,
        "smoke": bool(args.smoke),
        "rule_check_max_diff": rule_diff,
        "gpt2": {"n_layer": L, "n_head": H, "n_embd": E, "vocab_size": cfg["vocab_size"]},
        "clip": {"image": size, "proj": clip.cfg["proj"]},
        "mapper": {"prefix_size": d_in, "prefix_length": mapper.k},
    }
    tmp = os.path.join(args.out, "manifest.json.tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, os.path.join(args.out, "manifest.json"))


if __name__ == "__main__":
    main()
