"""Train a small GPT-style decoder with FSDP2 in bf16 autocast, every collective through netagg or gloo.

    netagg switch --listen 127.0.0.1:47000 --workers 4 &
    NETAGG_SWITCH=127.0.0.1:47000 torchrun --nproc-per-node 4 examples/train_gpt.py --backend netagg
    torchrun --nproc-per-node 4 examples/train_gpt.py --backend gloo      # the same, on gloo
    python examples/train_gpt.py --compare --out out/gpt   # both, and a report: netagg demo --gpt

The model is a decoder-only transformer (pre-norm blocks of causal self-attention and a GELU MLP,
learned positions), character-level on a corpus this file generates (:func:`corpus`; nothing is
downloaded). Each block and the root are sharded with ``torch.distributed.fsdp.fully_shard`` over the
process group of ``--backend``: parameters are all-gathered before use and gradients reduce-scattered,
so with ``netagg`` both go through the switch. The forward and backward passes run under
``torch.autocast("cpu", torch.bfloat16)``; ``--bf16-comm`` also all-gathers and reduce-scatters in bf16
(FSDP2's ``MixedPrecisionPolicy``). Seeds are fixed: every rank starts from the same weights, rank r
draws its own batches, and a run over gloo sees the same data as one over netagg.

Rank 0 prints ``PROGRESS step total`` lines (with --progress) and, with --out, writes the run as JSON:
the mean training loss over the ranks at every step, a held-out loss every --eval-every steps and at the
end, step times, tokens per second, and the backend's per-rank counters (bytes through the switch).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F  # noqa: N812 (torch's own spelling)

# --------------------------------------------------------------------------------------------------
# The corpus: pseudo-English from a small grammar, the same for every seed-0 run on every machine.

_NOUNS = (
    "cat", "dog", "bird", "fox", "horse", "mouse", "owl", "wolf", "bear", "frog", "king", "queen", "farmer",
    "sailor", "child", "river", "mountain", "garden", "city", "forest", "ship", "lamp", "clock", "letter",
)  # fmt: skip
_ADJECTIVES = (
    "small", "old", "quick", "quiet", "bright", "dark", "green", "red", "heavy", "gentle", "strange",
    "happy", "cold", "wise",
)  # fmt: skip
_VERBS = (
    "sees", "finds", "follows", "carries", "paints", "hears", "remembers", "builds", "visits", "watches",
    "keeps", "loves",
)  # fmt: skip
_PLACES = (
    "under the bridge",
    "near the sea",
    "in the morning",
    "at night",
    "by the old wall",
    "across the hill",
)


def _phrase(rng: random.Random) -> str:
    words = ["the" if rng.random() < 0.7 else "a"]
    if rng.random() < 0.6:
        words.append(rng.choice(_ADJECTIVES))
    words.append(rng.choice(_NOUNS))
    return " ".join(words)


def corpus(chars: int = 400_000, seed: int = 1234) -> str:
    """About ``chars`` characters of sentences from a small grammar (subject, verb, object, sometimes a
    place and a second clause), deterministic for a given seed: structure a model learns in minutes."""
    rng = random.Random(seed)
    out: list[str] = []
    n = 0
    while n < chars:
        s = f"{_phrase(rng)} {rng.choice(_VERBS)} {_phrase(rng)}"
        if rng.random() < 0.4:
            s += " " + rng.choice(_PLACES)
        if rng.random() < 0.3:
            s += f" and {_phrase(rng)} {rng.choice(_VERBS)} it"
        s = s[0].upper() + s[1:] + ("." if rng.random() < 0.8 else "!")
        out.append(s)
        n += len(s) + 1
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------------
# The model.


class Block(nn.Module):
    """A pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.out = nn.Linear(4 * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    """Token and position embeddings, ``layers`` blocks, a final norm and an (untied) output layer."""

    def __init__(self, vocab: int, context: int, d_model: int, layers: int, heads: int) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model {d_model} is not a multiple of heads {heads}")
        self.context = context
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(Block(d_model, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab, bias=False)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                # GPT-2's init; the residual projections scaled down with depth
                std = 0.02 / math.sqrt(2 * layers) if name.endswith(("proj.weight", "out.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln(x))
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))


# --------------------------------------------------------------------------------------------------
# Training.


#: The flags --compare passes on to both runs (those not at their defaults).
TRAINING_FLAGS = (
    "steps", "batch_size", "context", "d_model", "layers", "heads", "lr", "warmup", "clip", "eval_every",
    "eval_batches", "seed",
)  # fmt: skip
DEFAULTS: dict[str, Any] = {}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--backend",
        default="netagg",
        help="process group backend: netagg (its switch from $NETAGG_SWITCH or $NETAGG_CONTROLLER) or gloo",
    )
    p.add_argument("--compare", action="store_true", help="drive: run on netagg and on gloo, then report")
    p.add_argument("--workers", type=int, default=4, help="with --compare: processes per run (default 4)")
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--batch-size", type=int, default=4, help="sequences per rank per step")
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=10, help="steps of linear learning-rate warm-up")
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clip (0: none)")
    p.add_argument("--eval-every", type=int, default=40, help="held-out loss every N steps (0: at the end)")
    p.add_argument("--eval-batches", type=int, default=16, help="held-out batches of 8 sequences")
    p.add_argument("--bf16-comm", action="store_true", help="all-gather and reduce-scatter in bfloat16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out", type=Path, help="rank 0 writes the run's metrics here (JSON; a folder with --compare)"
    )
    p.add_argument("--progress", action="store_true", help="rank 0 prints 'PROGRESS step total' lines")
    DEFAULTS.update({name: p.get_default(name) for name in TRAINING_FLAGS})
    args = p.parse_args(argv)
    for name in ("steps", "batch_size", "context", "d_model", "layers", "heads", "workers", "eval_batches"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


class Data:
    """The corpus as token ids: the first 90% to train on, the rest held out. Rank r's batches come
    from its own generator (seed, rank); held-out batches are the same at every rank."""

    def __init__(self, seed: int, rank: int) -> None:
        text = corpus()
        self.chars = sorted(set(text))
        ids = torch.tensor([self.chars.index(c) for c in text], dtype=torch.long)
        cut = int(0.9 * len(ids))
        self.train, self.held_out = ids[:cut], ids[cut:]
        self.gen = torch.Generator().manual_seed(seed * 1_000_003 + rank)
        self.seed = seed

    def batch(self, size: int, context: int, held_out: bool = False, index: int = 0) -> tuple[Any, Any]:
        src = self.held_out if held_out else self.train
        gen = torch.Generator().manual_seed(self.seed + 7919 * index) if held_out else self.gen
        starts = torch.randint(len(src) - context - 1, (size,), generator=gen)
        x = torch.stack([src[s : s + context] for s in starts])
        y = torch.stack([src[s + 1 : s + context + 1] for s in starts])
        return x, y


def build(args: argparse.Namespace, vocab: int) -> nn.Module:
    """The model, with the same weights at every rank, sharded by FSDP2 block by block and at the root."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    torch.manual_seed(args.seed)
    model = GPT(vocab, args.context, args.d_model, args.layers, args.heads)
    mp = MixedPrecisionPolicy(
        param_dtype=torch.bfloat16 if args.bf16_comm else None,
        reduce_dtype=torch.bfloat16 if args.bf16_comm else None,
    )
    for block in model.blocks:
        fully_shard(block, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


#: The backend counters every rank reports (netagg's stats(): its worker's traffic, and the collectives
#: through the switch and through its inner gloo group, summed over the kinds of op).
STAT_KEYS = ("bytes_sent", "bytes_received", "sent", "received", "retransmissions", "switch_ops", "fallbacks")


def backend_stats() -> dict[str, Any]:
    """What the default group says it did (netagg's group is its backend: ``stats()``), or {} (gloo
    keeps no such counters)."""
    stats = getattr(dist.group.WORLD, "stats", None)
    return dict(stats()) if callable(stats) else {}


def stat_row(stats: dict[str, Any]) -> list[float]:
    """:data:`STAT_KEYS` of ``stats`` as numbers (per-op counters summed)."""
    flat = {**stats.get("traffic", {})}
    for key in ("switch_ops", "fallbacks"):
        flat[key] = sum(stats.get(key, {}).values())
    return [float(flat.get(k, 0)) for k in STAT_KEYS]


def evaluate(model: nn.Module, data: Data, args: argparse.Namespace) -> float:
    model.eval()
    losses = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for i in range(args.eval_batches):
            x, y = data.batch(8, args.context, held_out=True, index=i)
            losses.append(model(x, y).item())
    model.train()
    return statistics.fmean(losses)


def gather_floats(values: list[float]) -> list[list[float]]:
    """Every rank's ``values`` (the same length at each), exactly: an all-gather carries bytes."""
    mine = torch.tensor(values, dtype=torch.float64)
    every = torch.empty(dist.get_world_size() * len(values), dtype=torch.float64)
    dist.all_gather_single(every, mine)  # all_gather_into_tensor, renamed in torch 2.13
    return every.view(dist.get_world_size(), len(values)).tolist()


def train(args: argparse.Namespace) -> int:
    if args.backend == "netagg":
        import host_agent  # noqa: F401  (registers the "netagg" backend)
    dist.init_process_group(args.backend)  # torchrun's environment
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    data = Data(args.seed, rank)
    model = build(args, len(data.chars))
    params = sum(p.numel() for p in model.parameters())  # the full shapes (DTensors)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / args.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / args.steps)))
        ),
    )
    losses, step_times, evals = [], [], []
    dist.barrier()
    t_start = time.perf_counter()
    for step in range(1, args.steps + 1):
        t0 = time.perf_counter()
        x, y = data.batch(args.batch_size, args.context)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(x, y)
        loss.backward()
        if args.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        step_times.append(time.perf_counter() - t0)
        if args.eval_every and step % args.eval_every == 0 and step != args.steps:
            evals.append({"step": step, "loss": evaluate(model, data, args)})
        if args.progress and rank == 0:
            print(f"PROGRESS {step} {args.steps}", flush=True)
    elapsed = time.perf_counter() - t_start
    evals.append({"step": args.steps, "loss": evaluate(model, data, args)})
    stats = backend_stats()  # before the exchange below adds to it
    keys = STAT_KEYS if stats else ()
    rows = gather_floats([*losses, *step_times, *(stat_row(stats) if stats else [])])
    if rank == 0:
        n = args.steps
        mean_loss = [statistics.fmean(r[i] for r in rows) for i in range(n)]
        slowest = [max(r[n + i] for r in rows) for i in range(n)]
        timed = slowest[min(3, n - 1) :]  # the first steps include FSDP's and the allocator's set-up
        tokens = world * args.batch_size * args.context
        result = {
            "backend": args.backend,
            "world_size": world,
            "parameters": params,
            "config": {k: v for k, v in vars(args).items() if k not in ("out", "compare", "progress")},
            "vocab": len(data.chars),
            "steps": n,
            "tokens_per_step": tokens,
            "train_loss": mean_loss,
            "eval": evals,
            "final_eval_loss": evals[-1]["loss"],
            "final_train_loss": statistics.fmean(mean_loss[-min(10, n) :]),
            "step_times_s": slowest,
            "median_step_ms": 1e3 * statistics.median(timed),
            "tokens_per_s": tokens / statistics.median(timed),
            "elapsed_s": elapsed,
            "backend_stats": [dict(zip(keys, r[2 * n :], strict=True)) for r in rows],
            "backend_stats_rank0": stats,
        }
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=1))
        print(
            f"{args.backend}: {params:,} parameters, {n} steps; train loss {result['final_train_loss']:.4f}, "
            f"held-out {result['final_eval_loss']:.4f}; median step {result['median_step_ms']:.0f} ms, "
            f"{result['tokens_per_s']:.0f} tokens/s",
            flush=True,
        )
    dist.destroy_process_group()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.compare:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from netagg.cli.demo_gpt import run_gpt_demo

        flags = [
            f"--{name.replace('_', '-')}={getattr(args, name)}"
            for name in TRAINING_FLAGS
            if getattr(args, name) != DEFAULTS[name]
        ]
        flags += ["--bf16-comm"] if args.bf16_comm else []
        return run_gpt_demo(args.workers, args.out or Path("out/gpt"), flags, backend=args.backend)
    return train(args)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
