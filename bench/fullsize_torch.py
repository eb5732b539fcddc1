"""Plain-PyTorch ClipCap pieces for the `clipcap bench clip|caption --pytorch` comparisons (dev-only).

No transformers / clip packages: GPT-2 small (as transformers' GPT2LMHeadModel computes it), the CLIP ViT-B/32
vision tower + projection (as CLIPVisionModelWithProjection) and the ClipCap MLP mapper are written out here,
with every weight built by the rule of test/fixtures/fullsize_goldens.json (so they are the same models the
TypeScript benches build, and the scripts check that against the fixture goldens). The two decoders are the
official predict.py `generate_beam` and `generate2`, ported as they are: each step runs GPT-2 over the whole
sequence (prefix + every token so far) and computes logits for every position; there is no KV cache.

Also the frame the two bench scripts share: their common options, the start (threads, torch, the weight-rule
check), timing with peak RSS, result rows and the JSON document they print.
"""
import argparse
import json
import math
import os
import resource
import statistics
import struct
import sys
import time

import numpy as np

# numpy's views of the safetensors dtypes the fixtures use.
_ST_DTYPES = {"F32": np.float32, "F64": np.float64, "I32": np.int32, "I64": np.int64, "U8": np.uint8}


def set_threads(threads):
    """Thread pools read these at load time: call before `import torch`. Debian's torch runs its ops on
    OpenMP and its matmuls on OpenBLAS's own pthreads; with OpenMP's default (active) wait policy the two
    pools fight and every parallel op after a matmul stalls for milliseconds, so idle OpenMP threads sleep
    (OMP_WAIT_POLICY=PASSIVE: the tuned PyTorch the comparison uses; set it yourself to override)."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# ---- the weight rule (fullsize_goldens.json) ----


def lowbias32(x):
    """Chris Wellons' lowbias32 on a uint32 array (numpy's uint32 products wrap mod 2^32)."""
    x = x.astype(np.uint32, copy=True)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    return x


def fnv1a32(s):
    h = 0x811C9DC5
    for byte in s.encode("utf-8"):
        h ^= byte
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h


def _is_layer_norm_weight(name):
    return any(t in name for t in ("ln_", "layer_norm", "layernorm", "layrnorm")) and name.endswith(".weight")


def synthetic_values(name, count, zero_attn_bias=True):
    """float32 values of tensor `name` by the rule; GPT-2's `*attn.bias` tensors are zero unless told otherwise."""
    if zero_attn_bias and name.endswith("attn.bias"):
        return np.zeros(count, dtype=np.float32)
    ln = _is_layer_norm_weight(name)
    center = 1.0 if ln else 0.0
    half = 0.1 if ln else 0.02 if name.endswith(".bias") else 0.2 if name.endswith("wte.weight") else 0.05
    seed = np.uint32(fnv1a32(name))
    out = np.empty(count, dtype=np.float32)
    chunk = 1 << 22  # bounded temporaries for the 38.6M-value wte
    for start in range(0, count, chunk):
        i = np.arange(start, min(count, start + chunk), dtype=np.uint32)
        u = lowbias32(i * np.uint32(0x9E3779B9) + seed).astype(np.float64) / 4294967296.0
        out[start : start + len(i)] = center + (2.0 * u - 1.0) * half  # float64, rounded once to float32
    return out


def synthetic_tensor(torch, name, shape):
    n = int(np.prod(shape))
    return torch.from_numpy(synthetic_values(name, n).reshape(shape))


def check_rule(path):
    """Compare the rule with fullsize_rule_check.json (first four values of five tensors, no attn.bias zeroing)."""
    with open(path) as f:
        check = json.load(f)
    worst = 0.0
    for name, ref in check.items():
        got = synthetic_values(name, len(ref), zero_attn_bias=False)
        worst = max(worst, float(np.max(np.abs(got.astype(np.float64) - np.array(ref)))))
    return worst


# ---- configs (the same as src/models/config.ts, and the tiny smoke-test shapes) ----

GPT2_SMALL = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, eps=1e-5)
CLIP_VIT_B32 = dict(hidden=768, inner=3072, layers=12, heads=12, image=224, patch=32, proj=512, eps=1e-5)
MLP_MAPPER = dict(sizes=(512, 3840, 7680), prefix_length=10)

GPT2_TINY = dict(vocab_size=50257, n_positions=128, n_embd=32, n_layer=2, n_head=4, eps=1e-5)
CLIP_TINY = dict(hidden=32, inner=64, layers=2, heads=4, image=224, patch=32, proj=24, eps=1e-5)
MLP_TINY = dict(sizes=(24, 160, 320), prefix_length=10)


# ---- models ----


def build_clip(torch, smoke=False):
    """The CLIP vision tower + projection (eval mode); smoke=True gives tiny shapes (same rule)."""
    return ClipVision(torch, CLIP_TINY if smoke else CLIP_VIT_B32)


def build_captioner(torch, smoke=False):
    """(mlp_mapper, gpt2) in eval mode; smoke=True gives tiny shapes (same rule)."""
    g = GPT2_TINY if smoke else GPT2_SMALL
    return MlpMapper(torch, MLP_TINY if smoke else MLP_MAPPER, g["n_embd"]), Gpt2(torch, g)


def _module_classes(torch):
    nn = torch.nn
    F = torch.nn.functional

    class Gpt2(nn.Module):
        """GPT2LMHeadModel.forward(inputs_embeds=...).logits for every position, as transformers computes it:
        Conv1D layers as addmm over (in, out) weights, causal softmax attention, gelu_new, tied LM head."""

        def __init__(self, cfg):
            super().__init__()
            self.cfg = cfg
            e, inner = cfg["n_embd"], 4 * cfg["n_embd"]
            p = lambda name, shape: nn.Parameter(synthetic_tensor(torch, name, shape), requires_grad=False)
            self.wte = p("wte.weight", (cfg["vocab_size"], e))
            self.wpe = p("wpe.weight", (cfg["n_positions"], e))
            self.blocks = []
            for i in range(cfg["n_layer"]):
                pre = f"h.{i}."
                blk = {}
                for name, shape in (
                    ("ln_1.weight", (e,)),
                    ("ln_1.bias", (e,)),
                    ("attn.c_attn.weight", (e, 3 * e)),
                    ("attn.c_attn.bias", (3 * e,)),
                    ("attn.c_proj.weight", (e, e)),
                    ("attn.c_proj.bias", (e,)),
                    ("ln_2.weight", (e,)),
                    ("ln_2.bias", (e,)),
                    ("mlp.c_fc.weight", (e, inner)),
                    ("mlp.c_fc.bias", (inner,)),
                    ("mlp.c_proj.weight", (inner, e)),
                    ("mlp.c_proj.bias", (e,)),
                ):
                    blk[name] = p(pre + name, shape)
                    self.register_parameter((pre + name).replace(".", "_"), blk[name])
                self.blocks.append(blk)
            self.ln_f_w = p("ln_f.weight", (e,))
            self.ln_f_b = p("ln_f.bias", (e,))
            n = cfg["n_positions"]
            self.register_buffer("causal", torch.tril(torch.ones(n, n, dtype=torch.bool)).view(1, 1, n, n))

        @staticmethod
        def conv1d(x, w, b):
            # transformers' Conv1D: addmm(bias, x.view(-1, in), weight (in, out))
            out = torch.addmm(b, x.reshape(-1, x.size(-1)), w)
            return out.view(*x.shape[:-1], w.size(1))

        def embed(self, ids):
            return F.embedding(ids, self.wte)

        def forward(self, inputs_embeds):
            # inputs_embeds: (B, T, E) -> logits (B, T, V)
            cfg = self.cfg
            B, T, E = inputs_embeds.shape
            H = cfg["n_head"]
            D = E // H
            eps = cfg["eps"]
            h = inputs_embeds + self.wpe[:T]
            mask = self.causal[:, :, :T, :T]
            neg = torch.finfo(h.dtype).min
            for blk in self.blocks:
                a = F.layer_norm(h, (E,), blk["ln_1.weight"], blk["ln_1.bias"], eps)
                qkv = self.conv1d(a, blk["attn.c_attn.weight"], blk["attn.c_attn.bias"])
                q, k, v = (t.view(B, T, H, D).permute(0, 2, 1, 3) for t in qkv.split(E, dim=2))
                w = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(D)
                w = torch.where(mask, w, torch.tensor(neg, dtype=w.dtype))
                w = w.softmax(dim=-1)
                o = torch.matmul(w, v).permute(0, 2, 1, 3).reshape(B, T, E)
                h = h + self.conv1d(o, blk["attn.c_proj.weight"], blk["attn.c_proj.bias"])
                m = F.layer_norm(h, (E,), blk["ln_2.weight"], blk["ln_2.bias"], eps)
                m = self.conv1d(m, blk["mlp.c_fc.weight"], blk["mlp.c_fc.bias"])
                m = 0.5 * m * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (m + 0.044715 * torch.pow(m, 3.0))))
                h = h + self.conv1d(m, blk["mlp.c_proj.weight"], blk["mlp.c_proj.bias"])
            h = F.layer_norm(h, (E,), self.ln_f_w, self.ln_f_b, eps)
            return F.linear(h, self.wte)  # lm_head tied to wte, over every position

        def forward_kv(self, inputs_embeds, past):
            """The same model with a KV cache (what Hugging Face's generate() does): inputs_embeds (B, T, E)
            are the next T positions after `past` (a list of (k, v) per layer, each (B, H, P, D), or None);
            returns the last position's logits (B, V) and the new past."""
            cfg = self.cfg
            B, T, E = inputs_embeds.shape
            H = cfg["n_head"]
            D = E // H
            eps = cfg["eps"]
            P = 0 if past is None else past[0][0].shape[2]
            h = inputs_embeds + self.wpe[P : P + T]
            mask = self.causal[:, :, P : P + T, : P + T]
            neg = torch.finfo(h.dtype).min
            new_past = []
            for i, blk in enumerate(self.blocks):
                a = F.layer_norm(h, (E,), blk["ln_1.weight"], blk["ln_1.bias"], eps)
                qkv = self.conv1d(a, blk["attn.c_attn.weight"], blk["attn.c_attn.bias"])
                q, k, v = (t.view(B, T, H, D).permute(0, 2, 1, 3) for t in qkv.split(E, dim=2))
                if past is not None:
                    k = torch.cat((past[i][0], k), dim=2)
                    v = torch.cat((past[i][1], v), dim=2)
                new_past.append((k, v))
                w = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(D)
                if T > 1:
                    w = torch.where(mask, w, torch.tensor(neg, dtype=w.dtype))
                w = w.softmax(dim=-1)
                o = torch.matmul(w, v).permute(0, 2, 1, 3).reshape(B, T, E)
                h = h + self.conv1d(o, blk["attn.c_proj.weight"], blk["attn.c_proj.bias"])
                m = F.layer_norm(h, (E,), blk["ln_2.weight"], blk["ln_2.bias"], eps)
                m = self.conv1d(m, blk["mlp.c_fc.weight"], blk["mlp.c_fc.bias"])
                m = 0.5 * m * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (m + 0.044715 * torch.pow(m, 3.0))))
                h = h + self.conv1d(m, blk["mlp.c_proj.weight"], blk["mlp.c_proj.bias"])
            h = F.layer_norm(h[:, -1, :], (E,), self.ln_f_w, self.ln_f_b, eps)
            return F.linear(h, self.wte), new_past

    class ClipVision(nn.Module):
        """CLIP vision tower + visual_projection: pixel_values (N, 3, S, S) -> projected embeddings (N, proj).
        q, k, v are one fused projection (as OpenAI CLIP's nn.MultiheadAttention in_proj)."""

        def __init__(self, cfg):
            super().__init__()
            self.cfg = cfg
            w, inner, ps = cfg["hidden"], cfg["inner"], cfg["patch"]
            grid = cfg["image"] // ps
            t = lambda name, shape: synthetic_tensor(torch, name, shape)
            pre = "vision_model."
            self.patch = t(pre + "embeddings.patch_embedding.weight", (w, 3, ps, ps))
            self.cls = t(pre + "embeddings.class_embedding", (w,))
            self.pos = t(pre + "embeddings.position_embedding.weight", (grid * grid + 1, w))
            self.pre_ln = (t(pre + "pre_layrnorm.weight", (w,)), t(pre + "pre_layrnorm.bias", (w,)))
            self.layers = []
            for i in range(cfg["layers"]):
                lp = f"{pre}encoder.layers.{i}."
                ws = {n: t(f"{lp}self_attn.{n}_proj.weight", (w, w)) for n in ("q", "k", "v", "out")}
                bs = {n: t(f"{lp}self_attn.{n}_proj.bias", (w,)) for n in ("q", "k", "v", "out")}
                self.layers.append(
                    dict(
                        ln1=(t(lp + "layer_norm1.weight", (w,)), t(lp + "layer_norm1.bias", (w,))),
                        ln2=(t(lp + "layer_norm2.weight", (w,)), t(lp + "layer_norm2.bias", (w,))),
                        qkv_w=torch.cat([ws["q"], ws["k"], ws["v"]], 0),
                        qkv_b=torch.cat([bs["q"], bs["k"], bs["v"]], 0),
                        out_w=ws["out"],
                        out_b=bs["out"],
                        fc1=(t(lp + "mlp.fc1.weight", (inner, w)), t(lp + "mlp.fc1.bias", (inner,))),
                        fc2=(t(lp + "mlp.fc2.weight", (w, inner)), t(lp + "mlp.fc2.bias", (w,))),
                    )
                )
            self.post_ln = (t(pre + "post_layernorm.weight", (w,)), t(pre + "post_layernorm.bias", (w,)))
            self.proj = t("visual_projection.weight", (cfg["proj"], w))

        def forward(self, pixels):
            cfg = self.cfg
            w, H, eps = cfg["hidden"], cfg["heads"], cfg["eps"]
            D = w // H
            N = pixels.shape[0]
            x = F.conv2d(pixels, self.patch, stride=cfg["patch"]).flatten(2).transpose(1, 2)  # (N, g², w)
            x = torch.cat([self.cls.expand(N, 1, w), x], dim=1) + self.pos
            x = F.layer_norm(x, (w,), *self.pre_ln, eps)
            L = x.shape[1]
            for lay in self.layers:
                a = F.layer_norm(x, (w,), *lay["ln1"], eps)
                q, k, v = F.linear(a, lay["qkv_w"], lay["qkv_b"]).split(w, dim=2)
                q, k, v = (u.reshape(N, L, H, D).transpose(1, 2) for u in (q, k, v))
                att = (torch.matmul(q, k.transpose(-1, -2)) * (D**-0.5)).softmax(dim=-1)
                o = torch.matmul(att, v).transpose(1, 2).reshape(N, L, w)
                x = x + F.linear(o, lay["out_w"], lay["out_b"])
                m = F.linear(F.layer_norm(x, (w,), *lay["ln2"], eps), *lay["fc1"])
                m = m * torch.sigmoid(1.702 * m)  # quick_gelu
                x = x + F.linear(m, *lay["fc2"])
            pooled = F.layer_norm(x[:, 0], (w,), *self.post_ln, eps)
            return F.linear(pooled, self.proj)

    class MlpMapper(nn.Module):
        """ClipCap's MLP: Linear(D, K·E/2) -> Tanh -> Linear(K·E/2, K·E), viewed (N, K, E)."""

        def __init__(self, cfg, width):
            super().__init__()
            s = cfg["sizes"]
            self.k = cfg["prefix_length"]
            self.width = width
            t = lambda name, shape: synthetic_tensor(torch, name, shape)
            self.l0 = (t("clip_project.model.0.weight", (s[1], s[0])), t("clip_project.model.0.bias", (s[1],)))
            self.l2 = (t("clip_project.model.2.weight", (s[2], s[1])), t("clip_project.model.2.bias", (s[2],)))

        def forward(self, x):
            y = F.linear(torch.tanh(F.linear(x, *self.l0)), *self.l2)
            return y.view(-1, self.k, self.width)

    return Gpt2, ClipVision, MlpMapper


def Gpt2(torch, cfg):
    return _module_classes(torch)[0](cfg).eval()


def ClipVision(torch, cfg):
    return _module_classes(torch)[1](cfg).eval()


def MlpMapper(torch, cfg, width):
    return _module_classes(torch)[2](cfg, width).eval()


# ---- the official decoders (predict.py), without the tokenizer: they return token ids ----


def generate_beam(torch, gpt, embed, beam_size=5, entry_length=67, temperature=1.0, stop_token_index=13):
    """predict.py generate_beam for one prefix `embed` (1, K, E); stop_token_index None = never stop.
    Returns the beams' token lists, best first."""
    tokens = None
    scores = None
    seq_lengths = torch.ones(beam_size)
    is_stopped = torch.zeros(beam_size, dtype=torch.bool)
    with torch.no_grad():
        generated = embed
        for _ in range(entry_length):
            logits = gpt(generated)
            logits = logits[:, -1, :] / (temperature if temperature > 0 else 1.0)
            logits = logits.softmax(-1).log()
            if scores is None:
                scores, next_tokens = logits.topk(beam_size, -1)
                generated = generated.expand(beam_size, *generated.shape[1:])
                next_tokens, scores = next_tokens.permute(1, 0), scores.squeeze(0)
                if tokens is None:
                    tokens = next_tokens
                else:
                    tokens = tokens.expand(beam_size, *tokens.shape[1:])
                    tokens = torch.cat((tokens, next_tokens), dim=1)
            else:
                logits[is_stopped] = -float(np.inf)
                logits[is_stopped, 0] = 0
                scores_sum = scores[:, None] + logits
                seq_lengths[~is_stopped] += 1
                scores_sum_average = scores_sum / seq_lengths[:, None]
                scores_sum_average, next_tokens = scores_sum_average.view(-1).topk(beam_size, -1)
                next_tokens_source = torch.div(next_tokens, scores_sum.shape[1], rounding_mode="floor")
                seq_lengths = seq_lengths[next_tokens_source]
                next_tokens = next_tokens % scores_sum.shape[1]
                next_tokens = next_tokens.unsqueeze(1)
                tokens = tokens[next_tokens_source]
                tokens = torch.cat((tokens, next_tokens), dim=1)
                generated = generated[next_tokens_source]
                scores = scores_sum_average * seq_lengths
                is_stopped = is_stopped[next_tokens_source]
            next_token_embed = gpt.embed(next_tokens.squeeze()).view(generated.shape[0], 1, -1)
            generated = torch.cat((generated, next_token_embed), dim=1)
            if stop_token_index is not None:
                is_stopped = is_stopped + next_tokens.eq(stop_token_index).squeeze()
            if is_stopped.all():
                break
    scores = scores / seq_lengths
    output_list = tokens.cpu().numpy()
    outputs = [list(map(int, out[: int(length)])) for out, length in zip(output_list, seq_lengths)]
    order = scores.argsort(descending=True)
    return [outputs[i] for i in order]


def generate2(torch, gpt, embed, entry_length=67, top_p=0.8, temperature=1.0, stop_token_index=13):
    """predict.py generate2 (entry_count 1) for one prefix `embed` (1, K, E): top-p filter then argmax.
    stop_token_index None = never stop. Returns the token ids."""
    tokens = None
    filter_value = -float("Inf")
    with torch.no_grad():
        generated = embed
        for _ in range(entry_length):
            logits = gpt(generated)
            logits = logits[:, -1, :] / (temperature if temperature > 0 else 1.0)
            sorted_logits, sorted_indices = torch.sort(logits, descending=True)
            cumulative_probs = torch.cumsum(torch.nn.functional.softmax(sorted_logits, dim=-1), dim=-1)
            sorted_indices_to_remove = cumulative_probs > top_p
            sorted_indices_to_remove[..., 1:] = sorted_indices_to_remove[..., :-1].clone()
            sorted_indices_to_remove[..., 0] = 0
            indices_to_remove = sorted_indices[sorted_indices_to_remove]
            logits[:, indices_to_remove] = filter_value
            next_token = torch.argmax(logits, -1).unsqueeze(0)
            next_token_embed = gpt.embed(next_token)
            if tokens is None:
                tokens = next_token
            else:
                tokens = torch.cat((tokens, next_token), dim=1)
            generated = torch.cat((generated, next_token_embed), dim=1)
            if stop_token_index is not None and stop_token_index == next_token.item():
                break
    return [int(t) for t in tokens.view(-1)]


def generate_beam_kv(torch, gpt, embeds, beam_size=5, entry_length=67, temperature=1.0, stop_token_index=13):
    """generate_beam with a KV cache, for N prefixes at once (embeds (N, K, E)): the official algorithm per
    prefix (the same log-softmax, scores, lengths, topk and stopping), every prefix's beams in one forward
    per step. Returns, per prefix, the beams' token lists best first (equal to generate_beam's)."""
    N = embeds.shape[0]
    with torch.no_grad():
        logits, past = gpt.forward_kv(embeds, None)
        logp = (logits / (temperature if temperature > 0 else 1.0)).softmax(-1).log()  # (N, V)
        scores, next_tokens = logp.topk(beam_size, -1)  # (N, beam)
        rows = torch.arange(N).repeat_interleave(beam_size)
        past = [(k[rows], v[rows]) for k, v in past]
        scores = scores.reshape(-1)
        tokens = next_tokens.reshape(-1, 1)
        seq_lengths = torch.ones(N * beam_size)
        is_stopped = torch.zeros(N * beam_size, dtype=torch.bool)
        if stop_token_index is not None:
            is_stopped = tokens[:, 0].eq(stop_token_index)
        for _ in range(1, entry_length):
            if is_stopped.all():
                break
            logits, past = gpt.forward_kv(gpt.embed(tokens[:, -1]).unsqueeze(1), past)
            logp = (logits / (temperature if temperature > 0 else 1.0)).softmax(-1).log()  # (N*beam, V)
            V = logp.shape[1]
            logp[is_stopped] = -float(np.inf)
            logp[is_stopped, 0] = 0
            scores_sum = scores[:, None] + logp
            seq_lengths[~is_stopped] += 1
            avg = (scores_sum / seq_lengths[:, None]).view(N, beam_size * V)
            avg, flat = avg.topk(beam_size, -1)  # (N, beam)
            source = torch.div(flat, V, rounding_mode="floor") + torch.arange(N)[:, None] * beam_size
            source = source.reshape(-1)
            next_tokens = (flat % V).reshape(-1, 1)
            seq_lengths = seq_lengths[source]
            tokens = torch.cat((tokens[source], next_tokens), dim=1)
            past = [(k[source], v[source]) for k, v in past]
            scores = avg.reshape(-1) * seq_lengths
            is_stopped = is_stopped[source]
            if stop_token_index is not None:
                is_stopped = is_stopped | next_tokens[:, 0].eq(stop_token_index)
    out = []
    for i in range(N):
        sl = slice(i * beam_size, (i + 1) * beam_size)
        s = scores[sl] / seq_lengths[sl]
        toks = tokens[sl].tolist()
        lens = seq_lengths[sl].tolist()
        out.append([toks[j][: int(lens[j])] for j in s.argsort(descending=True).tolist()])
    return out


def greedy_kv(torch, gpt, embeds, entry_length=67, temperature=1.0, stop_token_index=13):
    """generate2's tokens with a KV cache for N prefixes (embeds (N, K, E)): the top-p filter keeps the most
    likely token, so the argmax of the logits is generate2's choice. Returns per prefix the token ids."""
    N = embeds.shape[0]
    with torch.no_grad():
        logits, past = gpt.forward_kv(embeds, None)
        toks = [logits.argmax(-1)]
        done = torch.zeros(N, dtype=torch.bool)
        for _ in range(1, entry_length):
            if stop_token_index is not None:
                done = done | toks[-1].eq(stop_token_index)
                if done.all():
                    break
            logits, past = gpt.forward_kv(gpt.embed(toks[-1]).unsqueeze(1), past)
            toks.append(logits.argmax(-1))
    t = torch.stack(toks, 1).tolist()
    if stop_token_index is None:
        return t
    return [row[: row.index(stop_token_index) + 1] if stop_token_index in row else row for row in t]


# ---- fixtures, preprocessing, memory ----


def read_safetensors(path):
    """{name: numpy array} of a safetensors file (the fixtures' dtypes only)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        arr = np.frombuffer(data[8 + n + a : 8 + n + b], dtype=_ST_DTYPES[t["dtype"]])
        out[name] = arr.reshape(t["shape"])
    return out


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def preprocess(torch, path, size=224):
    """OpenAI CLIP's transform: Resize(size, BICUBIC) (torchvision's size rounding), CenterCrop(size),
    RGB, ToTensor, Normalize; returns (3, size, size) float32."""
    from PIL import Image

    img = Image.open(path)
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    img = img.resize((new_w, new_h), Image.BICUBIC)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    img = img.crop((left, top, left + size, top + size)).convert("RGB")
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (x - mean) / std


def reset_peak_rss():
    """Linux: reset VmHWM to the current RSS, so the next peak_rss_mb() is the peak of what follows."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb():
    """Peak resident memory (MiB): VmHWM since the last reset, else the process's lifetime peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---- the frame of bench/pytorch_clip.py and bench/pytorch_caption.py ----


def bench_arg_parser(runs, smoke_help):
    """The options every full-size bench script takes (--threads, --runs, --smoke, --fixtures); add your own."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--runs", type=int, default=runs)
    ap.add_argument("--smoke", action="store_true", help=smoke_help)
    ap.add_argument("--fixtures", default=os.path.join(os.path.dirname(__file__), "..", "test", "fixtures"))
    return ap


def start_torch(args):
    """Thread pools set to --threads, torch imported, and the weight rule itself checked against the first
    values of five tensors (fullsize_rule_check.json; a WARNING line on stderr if it differs).
    Returns (torch, the rule's worst difference)."""
    set_threads(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    rule_diff = check_rule(os.path.join(args.fixtures, "fullsize_rule_check.json"))
    if rule_diff != 0.0:
        print(f"WARNING: the weight rule differs from fullsize_rule_check.json by {rule_diff:.3g}", file=sys.stderr)
    return torch, rule_diff


def timed(fn, runs, warmup=1):
    """Median seconds of `runs` calls of fn after `warmup` untimed ones, and the peak RSS (MiB) of the timed ones."""
    for _ in range(warmup):
        fn()
    reset_peak_rss()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), peak_rss_mb()


def result(case, metric, value, runs, rss=None, backend="pytorch"):
    """One PyTorch row of the report (DESIGN.md "Contracts")."""
    r = {"case": case, "backend": backend, "metric": metric, "value": value, "runs": runs}
    if rss is not None:
        r["peak_rss_mb"] = rss
    return r


def print_report(torch, rule_diff, results, **extra):
    """The document the TypeScript side reads: one JSON line on stdout."""
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "rule_check_max_diff": rule_diff}
    out.update(extra)
    out["results"] = results
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
