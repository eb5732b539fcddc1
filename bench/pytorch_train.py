#!/usr/bin/env python3
"""ClipCap training steps on PyTorch CPU autograd, the peer of `clipcap bench train` (dev-only; bench/compare.mjs).

Usage: python3 bench/pytorch_train.py --threads N [--runs R] [--smoke] [--fixtures test/fixtures]

The cases of src/bench/train.ts, one timed unit = a whole optimizer step (zero grads, forward, cross-entropy
loss over the caption positions with ignore_index 0 as train.py, backward, AdamW lr 2e-5 / eps 1e-6 / no weight
decay), batch 8, 20 caption tokens, K = 10, metric samples_per_s = 8 / median step time:
- mlp_finetune_b8_t20: MLP mapper 512 -> 3840 -> 7680 and GPT-2 small fine-tuned in train mode (dropout 0.1 on
  the embeddings, attention probabilities and residual branches, as transformers' GPT-2);
- transformer_frozen_b8_t20: the 8-layer transformer mapper (clip_length 10, 8 heads, MLP ratio 2), GPT-2
  frozen in eval mode (its weights take no gradient; the gradient flows through it to the prefix).
GPT-2 and the MLP mapper have the fixture-rule weights (bench/fullsize_torch.py); the transformer mapper has
torch's default init (the step does the same work whatever the values). Batch: fixed random prefixes and token
ids in 1..50000 (no padding), as the TypeScript side.
Prints one JSON document on stdout: {"torch", "threads", "results": [...]}.
"""
import math
import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fullsize_torch as ft  # noqa: E402

BATCH = 8
TOKENS = 20


def main():
    ap = ft.bench_arg_parser(runs=3, smoke_help="tiny models (same rule): checks the script runs")
    args = ap.parse_args()
    torch, rule_diff = ft.start_torch(args)
    nn = torch.nn
    F = torch.nn.functional
    smoke = args.smoke

    def gpt2_train_forward(gpt, embeds, train):
        """GPT2LMHeadModel logits (B, T, V) from inputs_embeds, with transformers' dropouts when train."""
        cfg = gpt.cfg
        B, T, E = embeds.shape
        H = cfg["n_head"]
        D = E // H
        eps = cfg["eps"]
        p = 0.1 if train else 0.0
        h = F.dropout(embeds + gpt.wpe[:T], p, train)
        mask = gpt.causal[:, :, :T, :T]
        neg = torch.finfo(h.dtype).min
        for blk in gpt.blocks:
            a = F.layer_norm(h, (E,), blk["ln_1.weight"], blk["ln_1.bias"], eps)
            qkv = gpt.conv1d(a, blk["attn.c_attn.weight"], blk["attn.c_attn.bias"])
            q, k, v = (t.reshape(B, T, H, D).permute(0, 2, 1, 3) for t in qkv.split(E, dim=2))
            w = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(D)
            w = torch.where(mask, w, torch.tensor(neg, dtype=w.dtype)).softmax(dim=-1)
            w = F.dropout(w, p, train)
            o = torch.matmul(w, v).permute(0, 2, 1, 3).reshape(B, T, E)
            h = h + F.dropout(gpt.conv1d(o, blk["attn.c_proj.weight"], blk["attn.c_proj.bias"]), p, train)
            m = F.layer_norm(h, (E,), blk["ln_2.weight"], blk["ln_2.bias"], eps)
            m = gpt.conv1d(m, blk["mlp.c_fc.weight"], blk["mlp.c_fc.bias"])
            m = 0.5 * m * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (m + 0.044715 * torch.pow(m, 3.0))))
            h = h + F.dropout(gpt.conv1d(m, blk["mlp.c_proj.weight"], blk["mlp.c_proj.bias"]), p, train)
        h = F.layer_norm(h, (E,), gpt.ln_f_w, gpt.ln_f_b, eps)
        return F.linear(h, gpt.wte)

    class TransformerMapper(nn.Module):
        """ClipCap's TransformerMapper (DESIGN.md): Linear(D, clip_length*E), concat prefix_const, pre-LN layers."""

        def __init__(self, d, e, k, clip_length, layers, heads):
            super().__init__()
            self.e, self.k, self.clip_length, self.heads = e, k, clip_length, heads
            self.linear = nn.Linear(d, clip_length * e)
            self.prefix_const = nn.Parameter(torch.randn(k, e))
            self.layers = nn.ModuleList(
                nn.ModuleDict(
                    dict(
                        norm1=nn.LayerNorm(e),
                        to_queries=nn.Linear(e, e, bias=False),
                        to_keys_values=nn.Linear(e, 2 * e, bias=False),
                        project=nn.Linear(e, e),
                        norm2=nn.LayerNorm(e),
                        fc1=nn.Linear(e, 2 * e),
                        fc2=nn.Linear(2 * e, e),
                    )
                )
                for _ in range(layers)
            )

        def forward(self, x):
            N = x.shape[0]
            x = self.linear(x).view(N, self.clip_length, self.e)
            x = torch.cat([x, self.prefix_const.unsqueeze(0).expand(N, self.k, self.e)], 1)
            L, H = x.shape[1], self.heads
            hd = self.e // H
            for lay in self.layers:
                a = lay["norm1"](x)
                q = lay["to_queries"](a).reshape(N, L, H, hd).transpose(1, 2)
                kv = lay["to_keys_values"](a).reshape(N, L, 2, H, hd)
                k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
                att = (torch.matmul(q, k.transpose(-1, -2)) * hd**-0.5).softmax(-1)
                o = torch.matmul(att, v).transpose(1, 2).reshape(N, L, self.e)
                x = x + lay["project"](o)
                x = x + lay["fc2"](F.relu(lay["fc1"](lay["norm2"](x))))
            return x[:, self.clip_length :]

    g = torch.Generator().manual_seed(1)
    results = []
    for case in ("mlp_finetune", "transformer_frozen"):
        mlp_mapper, gpt = ft.build_captioner(torch, smoke=smoke)
        E = gpt.cfg["n_embd"]
        d = 24 if smoke else 512
        finetune = case == "mlp_finetune"
        if finetune:
            mapper = mlp_mapper
            mapper.l0 = tuple(nn.Parameter(t) for t in mapper.l0)
            mapper.l2 = tuple(nn.Parameter(t) for t in mapper.l2)
            params = [*mapper.l0, *mapper.l2, *gpt.parameters()]
            for prm in gpt.parameters():
                prm.requires_grad_(True)
            k = mapper.k
        else:
            k = 2 if smoke else 10
            mapper = TransformerMapper(d, E, k, k, 1 if smoke else 8, 8)
            params = list(mapper.parameters())
        prefix = torch.rand(BATCH, d, generator=g) * 2 - 1
        tokens = torch.randint(1, 50001, (BATCH, TOKENS), generator=g)
        opt = torch.optim.AdamW(params, lr=2e-5, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0)

        def step():
            opt.zero_grad(set_to_none=False)
            pre = mapper(prefix).view(BATCH, k, E)
            embeds = torch.cat([pre, F.embedding(tokens, gpt.wte)], 1)
            logits = gpt2_train_forward(gpt, embeds, finetune)
            loss = F.cross_entropy(logits[:, k - 1 : -1].reshape(-1, logits.shape[-1]), tokens.reshape(-1), ignore_index=0)
            loss.backward()
            opt.step()

        t, rss = ft.timed(step, args.runs, warmup=0 if smoke else 1)
        value = BATCH / t
        cid = f"{case}_b{BATCH}_t{TOKENS}"
        print(f"pytorch {cid}: {value:.2f} samples/s", file=sys.stderr)
        results.append(ft.result(cid, "samples_per_s", value, args.runs, rss))
        del opt, mapper, gpt, params
    ft.print_report(torch, rule_diff, results)


if __name__ == "__main__":
    main()
