#!/usr/bin/env python3
"""OpenAI's RN50x4 CLIP image tower on PyTorch CPU, for `clipcap bench clip --model rn50x4 --pytorch` (dev-only).

Usage: python3 bench/pytorch_clip_resnet.py --threads N --runs R --images DIR [--smoke] [--batch 16] [--cases bs1,bs16]

The ModifiedResNet of openai/CLIP's clip/model.py written out with torch.nn.functional (3-conv stem + 2x2 average
pool, Bottleneck blocks with average-pool striding, attention pool), eval-mode BatchNorm (F.batch_norm with the
running statistics, as nn.BatchNorm2d runs in eval mode), weights by the rule of src/bench/clip-resnet.ts:
every visual.* tensor by the fixture rule (fullsize_torch.synthetic_values), conv weights scaled by
1 / (0.05 * sqrt(fan_in)), BatchNorm weight and running_var = 1 + the rule's value. In eval mode under
torch.no_grad(), float32, NCHW.
Cases (as src/bench/clip.ts): bs1, bs16 from preprocessed pixels (288 px); bs16_decode from the JPEG files
(PIL, one image after the other). Each value is the median of R timed runs after one warm-up.
Prints one JSON document on stdout: {"torch", "threads", "embeds_0": [the 640 values of photo 0's embedding,
for the TypeScript side to compare], "results": [...]}.
"""
import math
import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fullsize_torch as ft  # noqa: E402

import numpy as np  # noqa: E402

RN50X4 = dict(layers=(4, 6, 10, 6), width=80, image_size=288, heads=40, output_dim=640)
SMOKE = dict(layers=(1, 1, 2, 1), width=8, image_size=288, heads=4, output_dim=24)
EPS = 1e-5


def key_shapes(cfg):
    """visual.* names and shapes of the tower, in module order."""
    out = []
    w = cfg["width"]

    def conv(n, o, i, k):
        out.append((f"visual.{n}.weight", (o, i, k, k)))

    def bn(n, c):
        for p in ("weight", "bias", "running_mean", "running_var"):
            out.append((f"visual.{n}.{p}", (c,)))

    conv("conv1", w // 2, 3, 3)
    bn("bn1", w // 2)
    conv("conv2", w // 2, w // 2, 3)
    bn("bn2", w // 2)
    conv("conv3", w, w // 2, 3)
    bn("bn3", w)
    inplanes = w
    for s, blocks in enumerate(cfg["layers"]):
        planes = w * 2**s
        for b in range(blocks):
            p = f"layer{s + 1}.{b}"
            conv(f"{p}.conv1", planes, inplanes, 1)
            bn(f"{p}.bn1", planes)
            conv(f"{p}.conv2", planes, planes, 3)
            bn(f"{p}.bn2", planes)
            conv(f"{p}.conv3", planes * 4, planes, 1)
            bn(f"{p}.bn3", planes * 4)
            if (s > 0 and b == 0) or inplanes != planes * 4:
                conv(f"{p}.downsample.0", planes * 4, inplanes, 1)
                bn(f"{p}.downsample.1", planes * 4)
            inplanes = planes * 4
    embed = w * 32
    grid = cfg["image_size"] // 32
    out.append(("visual.attnpool.positional_embedding", (grid * grid + 1, embed)))
    for n in ("k_proj", "q_proj", "v_proj"):
        out.append((f"visual.attnpool.{n}.weight", (embed, embed)))
        out.append((f"visual.attnpool.{n}.bias", (embed,)))
    out.append(("visual.attnpool.c_proj.weight", (cfg["output_dim"], embed)))
    out.append(("visual.attnpool.c_proj.bias", (cfg["output_dim"],)))
    return out


def is_batch_norm(name):
    parts = name.split(".")
    return any(p.startswith("bn") and p[2:].isdigit() for p in parts) or ".downsample.1." in name


def weights(torch, cfg):
    sd = {}
    for name, shape in key_shapes(cfg):
        n = int(np.prod(shape))
        v = ft.synthetic_values(name, n).astype(np.float64)
        if len(shape) == 4:
            v = v * (1.0 / (0.05 * math.sqrt(shape[1] * shape[2] * shape[3])))
        elif is_batch_norm(name) and (name.endswith(".weight") or name.endswith(".running_var")):
            v = 1.0 + v
        sd[name] = torch.from_numpy(v.astype(np.float32).reshape(shape))
    return sd


def build(torch, cfg):
    F = torch.nn.functional
    sd = weights(torch, cfg)

    def conv_bn(x, conv, bn, stride=1, padding=0, relu=True):
        x = F.conv2d(x, sd[f"visual.{conv}.weight"], stride=stride, padding=padding)
        x = F.batch_norm(
            x,
            sd[f"visual.{bn}.running_mean"],
            sd[f"visual.{bn}.running_var"],
            sd[f"visual.{bn}.weight"],
            sd[f"visual.{bn}.bias"],
            training=False,
            eps=EPS,
        )
        return F.relu(x) if relu else x

    def bottleneck(x, p, stride, has_down):
        out = conv_bn(x, f"{p}.conv1", f"{p}.bn1")
        out = conv_bn(out, f"{p}.conv2", f"{p}.bn2", padding=1)
        if stride > 1:
            out = F.avg_pool2d(out, stride)
        out = conv_bn(out, f"{p}.conv3", f"{p}.bn3", relu=False)
        identity = x
        if has_down:
            identity = F.avg_pool2d(x, stride) if stride > 1 else x
            identity = conv_bn(identity, f"{p}.downsample.0", f"{p}.downsample.1", relu=False)
        return F.relu(out + identity)

    def attnpool(x):
        n, c, h, w = x.shape
        x = x.flatten(start_dim=2).permute(2, 0, 1)  # (HW, N, C)
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
        x = x + sd["visual.attnpool.positional_embedding"][:, None, :]
        a = "visual.attnpool."
        out, _ = F.multi_head_attention_forward(
            query=x[:1],
            key=x,
            value=x,
            embed_dim_to_check=c,
            num_heads=cfg["heads"],
            q_proj_weight=sd[a + "q_proj.weight"],
            k_proj_weight=sd[a + "k_proj.weight"],
            v_proj_weight=sd[a + "v_proj.weight"],
            in_proj_weight=None,
            in_proj_bias=torch.cat([sd[a + "q_proj.bias"], sd[a + "k_proj.bias"], sd[a + "v_proj.bias"]]),
            bias_k=None,
            bias_v=None,
            add_zero_attn=False,
            dropout_p=0.0,
            out_proj_weight=sd[a + "c_proj.weight"],
            out_proj_bias=sd[a + "c_proj.bias"],
            use_separate_proj_weight=True,
            training=False,
            need_weights=False,
        )
        return out.squeeze(0)

    down = {name.rsplit(".downsample.0.weight", 1)[0] for name, _ in key_shapes(cfg) if name.endswith("downsample.0.weight")}

    def forward(x):
        x = conv_bn(x, "conv1", "bn1", stride=2, padding=1)
        x = conv_bn(x, "conv2", "bn2", padding=1)
        x = conv_bn(x, "conv3", "bn3", padding=1)
        x = F.avg_pool2d(x, 2)
        for s, blocks in enumerate(cfg["layers"]):
            for b in range(blocks):
                p = f"layer{s + 1}.{b}"
                x = bottleneck(x, p, 2 if s > 0 and b == 0 else 1, f"visual.{p}" in down)
        return attnpool(x)

    return forward


def main():
    ap = ft.bench_arg_parser(runs=5, smoke_help="tiny ResNet (same rule): checks the script runs")
    ap.add_argument("--images", required=True)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--cases", default=None, help="comma-separated cases to run (default all)")
    args = ap.parse_args()
    wanted = args.cases.split(",") if args.cases else None
    torch, rule_diff = ft.start_torch(args)
    cfg = SMOKE if args.smoke else RN50X4
    model = build(torch, cfg)
    size = cfg["image_size"]
    names = sorted(n for n in os.listdir(args.images) if n.lower().endswith((".jpg", ".jpeg")))
    if not names:
        sys.exit(f"{args.images}: no JPEG files")
    files = [os.path.join(args.images, names[i % len(names)]) for i in range(args.batch)]
    pixels = torch.stack([ft.preprocess(torch, f, size) for f in files])  # (B, 3, 288, 288)

    def encode(px):
        with torch.no_grad():
            return model(px)

    embeds_0 = encode(pixels[:1])[0].tolist()

    def decode_and_encode():
        return encode(torch.stack([ft.preprocess(torch, f, size) for f in files]))

    results = []
    for case, n, fn in (
        ("bs1", 1, lambda: encode(pixels[:1])),
        (f"bs{args.batch}", args.batch, lambda: encode(pixels)),
        (f"bs{args.batch}_decode", args.batch, decode_and_encode),
    ):
        if wanted is not None and case not in wanted:
            continue
        t, rss = ft.timed(fn, args.runs, warmup=0 if args.smoke else 1)
        value = n / t
        print(f"pytorch {case}: {value:.2f} images/s", file=sys.stderr)
        results.append(ft.result(case, "images_per_s", value, args.runs, rss))
    ft.print_report(torch, rule_diff, results, embeds_0=embeds_0)


if __name__ == "__main__":
    main()
