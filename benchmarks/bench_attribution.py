"""Benchmark lakn's integrated gradients: speed, agreement and memory.

    /tmp/knenv/bin/python benchmarks/bench_attribution.py [--parts a,b,c,d,e] [--repeats 1]

(a) against EleutherAI knowledge-neurons 0.0.2 on a GPT-2-small-shaped model (12 layers,
    d_model 768, d_vocab 50257, random fixed weights, byte-level BPE trained here), m = 20,
    same hook point (pre-GELU ``mlp.c_fc`` output = lakn ``point="mlp.hook_pre"``) and grid
    (``grid="linspace"``); knowledge-neurons needs its own venv:
    ``python -m venv /tmp/knenv --system-site-packages && /tmp/knenv/bin/pip install
    knowledge-neurons==0.0.2 --no-deps`` (its imports are all in lakn's environment already);
(b) the embedded Gemma 3 270M: seconds per query at m = 20, reference vs fast vs approx, peak
    RSS growth, approx-vs-exact agreement (Spearman, top-neuron overlap); approx on 32 of lakn's
    demo queries one at a time vs sharing passes (``attribute_queries``);
(c) roofline: FLOPs of the minimal exact computation / measured matmul throughput;
(d) scaling with prompt length, steps, answer length and queries (time and memory);
(e) what one approx query streams (the bound of approx alone) and exact passes shared by
    queries with a 4-layer subset.
No downloads. Timings are wall-clock on a shared machine: repeat with ``--repeats``.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import os
import platform
import threading
import time

import psutil
import torch
from scipy.stats import pearsonr, spearmanr

from lakn.attribution import integrated_gradients
from lakn.models import bridge_from_hf
from lakn.tokens import EncodedQuery

SMALL_CHUNK = 64  # rows per pass in the small-chunk column (the default, batch_size=None, fits ~1 GiB)
N_BATCHED = 32  # queries in the batched approx measurement (demo facts written for lakn)

PROMPTS = [
    ("The capital of France is", " Paris"),
    ("Berlin is the capital of", " Germany"),
    ("The official language of Brazil is", " Portuguese"),
]
CORPUS = [p + a + "." for p, a in PROMPTS] * 3 + [
    "Paris is the capital city of France. Madrid is the capital of Spain. Rome is in Italy.",
    "The official language of Mexico is Spanish. Tokyo is the capital of Japan.",
]


def _release_freed_memory():
    """Hand freed heap memory back to the OS (glibc), so that RSS growth measures the next block
    and not what an earlier block left in the allocator."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakRSS:
    """Peak resident memory growth (MiB) while the block runs, sampled every 5 ms (after
    returning freed memory to the OS)."""

    def __enter__(self):
        _release_freed_memory()
        self.proc, self.start, self.peak, self.run = psutil.Process(), psutil.Process().memory_info().rss, 0, True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.run:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.run = False
        self.thread.join()
        self.mib = max(0, self.peak - self.start) / 2**20


def timed(fn, repeats=1):
    best, out = float("inf"), None
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def overlap(a: torch.Tensor, b: torch.Tensor, frac: float = 0.2) -> float:
    """Jaccard overlap of the neuron sets {Attr >= frac * max}."""
    sa, sb = set((a >= frac * a.max()).flatten().nonzero()[:, 0].tolist()), set(
        (b >= frac * b.max()).flatten().nonzero()[:, 0].tolist())
    return len(sa & sb) / max(1, len(sa | sb))


def topk_overlap(a: torch.Tensor, b: torch.Tensor, k: int = 20) -> float:
    ta, tb = set(a.flatten().topk(k).indices.tolist()), set(b.flatten().topk(k).indices.tolist())
    return len(ta & tb) / k


def table(rows, header):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    def line(r):
        return "| " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths)) + " |"

    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))
    print()


# --- (a) knowledge-neurons on a GPT-2-small shape --------------------------------------------


def gpt2_small(vocab_size: int = 50257):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS * 4, trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    tokenizer.init_kwargs["name_or_path"] = "bench-gpt2"
    cfg = GPT2Config(vocab_size=vocab_size, n_positions=1024, n_embd=768, n_layer=12, n_head=12)
    cfg.architectures = ["GPT2LMHeadModel"]
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # sharper than the default init, so answers get non-trivial probability
        for name, p in hf.named_parameters():
            if p.ndim >= 2 and "wte" not in name and "wpe" not in name:
                p.mul_(3.0)
    for p in hf.parameters():
        p.requires_grad_(False)
    return hf, tokenizer


def part_a(repeats: int):
    from knowledge_neurons import KnowledgeNeurons

    hf, tokenizer = gpt2_small()
    hf_kn = copy.deepcopy(hf)  # the bridge wraps modules in place: knowledge-neurons gets its own copy
    # the bridge wants a tokenizer that adds BOS (else it fetches one from the hub); lakn is
    # handed token ids directly, so both tools see exactly the same tokens
    bridge_tok = copy.deepcopy(tokenizer)
    bridge_tok.init_kwargs["add_bos_token"] = True
    model = bridge_from_hf(hf, bridge_tok, name="gpt2-small-shape")
    kn = KnowledgeNeurons(hf_kn, tokenizer, model_type="gpt2", device="cpu")
    rows, agree = [], []
    peak = matmul_gflops(1024, 1024, 1024)
    for prompt, answer in PROMPTS:
        ids = tokenizer(prompt)["input_ids"]
        ans = tokenizer.encode(answer)[:1]  # knowledge-neurons scores single-token answers for GPT-2
        gt = tokenizer.decode(ans)
        q = EncodedQuery(torch.tensor(ids), torch.tensor(ans))
        t_kn, s_kn = timed(lambda: kn.get_scores(prompt, gt, batch_size=20, steps=20, pbar=False), repeats)
        kw = dict(steps=20, point="mlp.hook_pre", grid="linspace")
        t_ref, r_ref = timed(lambda: integrated_gradients(model, q, attribution="reference", **kw), repeats)
        t_fast, r_fast = timed(lambda: integrated_gradients(model, q, attribution="fast", **kw), repeats)
        t_small, _ = timed(lambda: integrated_gradients(model, q, attribution="fast", batch_size=SMALL_CHUNK, **kw), repeats)
        t_apx, r_apx = timed(lambda: integrated_gradients(model, q, attribution="approx", **kw), repeats)
        a, b = s_kn.flatten().double(), r_fast.attributions.flatten().double()
        rows.append([repr(prompt + answer), len(ids), f"{t_kn:.2f}", f"{t_ref:.2f}", f"{t_fast:.2f}", f"{t_small:.2f}",
                     f"{t_apx:.3f}", f"{t_kn / t_fast:.1f}x / {t_kn / t_small:.1f}x", f"{pearsonr(a, b)[0]:.6f}",
                     f"{(a - b).abs().max() / a.abs().max():.1e}", f"{overlap(s_kn, r_fast.attributions):.3f}",
                     f"{minimal_flops(model, 20, len(ids)) / (peak * 1e9):.2f}",
                     f"{t_kn * peak * 1e9 / minimal_flops(model, 20, len(ids)):.0f}x"])
        agree.append((r_fast.attributions, r_apx.attributions))
    print("(a) knowledge-neurons 0.0.2 vs lakn, GPT-2-small shape, m = 20, hook_pre, linspace grid "
          "(seconds per prompt, best of %d)" % repeats)
    table(rows, ["prompt", "tokens", "kn s", "lakn ref s", "lakn fast s", f"fast s, chunk {SMALL_CHUNK}",
                 "lakn approx s", f"fast speed-up vs kn (default / chunk {SMALL_CHUNK})",
                 "Pearson(kn, fast)", "max rel diff", "overlap >=0.2max", "roofline s",
                 "kn s / roofline s (best possible speed-up)"])
    print(f"roofline: minimal exact FLOPs (as in (c)) / {peak:.0f} GFLOP/s, this machine's fp32 1024^3 matmul rate")
    return agree


# --- (b) Gemma 3 270M ---------------------------------------------------------------------------


def gemma_queries(model):
    out = []
    for prompt, answer in PROMPTS[:2]:
        p = model.to_tokens(prompt)[0]
        full = model.to_tokens(prompt + answer)[0]
        out.append((prompt + answer, EncodedQuery(p, full[len(p):])))
    return out


def demo_queries(model, n: int):
    """First ``n`` causal queries of lakn's own demo facts (en, fr, zh, ru; 2 paraphrases each)."""
    from lakn.facts import load_facts
    from lakn.tokens import encode_query

    out = [encode_query(model, q) for f in load_facts("demo") for lang in ("en", "fr", "zh", "ru")
           for q in f.queries(lang)[:2]]
    return out[:n]


def part_b(repeats: int):
    from lakn.attribution import attribute_queries
    from lakn.models import load_model

    model = load_model()
    rows, agree = [], []
    for text, q in gemma_queries(model):
        res = {}
        res["small"] = timed(lambda: integrated_gradients(model, q, steps=20, attribution="fast", first_token_only=True,
                                                          batch_size=SMALL_CHUNK), repeats)[0]
        for mode in ("reference", "fast", "approx"):
            with PeakRSS() as mem:
                t, r = timed(lambda: integrated_gradients(model, q, steps=20, attribution=mode, first_token_only=True),
                             repeats if mode != "reference" else 1)
            res[mode] = (t, r, mem.mib)
        (t_ref, r_ref, m_ref), (t_fast, r_fast, m_fast), (t_apx, r_apx, m_apx) = (
            res["reference"], res["fast"], res["approx"])
        diff = (r_ref.attributions - r_fast.attributions).abs().max() / r_ref.attributions.abs().max()
        t_small = res["small"]
        rows.append([repr(text), len(q.prompt), f"{t_ref:.1f}", f"{t_fast:.2f}", f"{t_small:.2f}", f"{t_apx:.3f}",
                     f"{t_ref / t_fast:.1f}x / {t_ref / t_small:.1f}x", f"{t_fast / t_apx:.0f}x", f"{diff:.1e}",
                     f"{m_ref:.0f} / {m_fast:.0f} / {m_apx:.0f}"])
        agree.append((r_fast.attributions, r_apx.attributions))
    print("(b) Gemma 3 270M (embedded), m = 20, first answer token, 18 layers x 2048 neurons "
          "(seconds per query; fast/approx best of %d; default chunk = batch_size=None)" % repeats)
    table(rows, ["query", "tokens", "reference s", "fast s", f"fast s, chunk {SMALL_CHUNK}", "approx s",
                 f"fast vs ref (default / chunk {SMALL_CHUNK})", "approx vs fast",
                 "max rel diff ref/fast", "peak RSS growth MiB ref/fast/approx"])

    # queries sharing passes: lakn's demo queries, one at a time vs together (attribute_queries)
    qs = demo_queries(model, N_BATCHED)
    kw = dict(steps=20, first_token_only=True)
    t_fast, _ = timed(lambda: [integrated_gradients(model, x, attribution="fast", **kw) for x in qs[:4]], 1)
    t_fast /= 4
    t_one, _ = timed(lambda: [integrated_gradients(model, x, attribution="approx", **kw) for x in qs], repeats)
    with PeakRSS() as mem:
        t_all, together = timed(lambda: attribute_queries(model, qs, attribution="approx", **kw), repeats)
    alone = [integrated_gradients(model, x, attribution="approx", **kw) for x in qs[:4]]
    diff = max(float((a.attributions - b.attributions).abs().max() / b.attributions.abs().max())
               for a, b in zip(together, alone))
    lengths = [len(x.prompt) for x in qs]
    print(f"(b2) {len(qs)} demo queries (en/fr/zh/ru, prompts of {min(lengths)}-{max(lengths)} tokens), "
          "seconds per query")
    table([[f"{t_fast:.2f}", f"{t_one / len(qs):.3f}", f"{t_all / len(qs):.3f}",
            f"{t_fast * len(qs) / t_one:.0f}x / {t_fast * len(qs) / t_all:.0f}x", f"{diff:.1e}", f"{mem.mib:.0f}"]],
          ["fast s (mean of 4)", "approx s, one query a pass", "approx s, queries share passes",
           "approx vs fast (alone / shared)", "max rel diff shared/alone", "peak RSS growth MiB (shared)"])
    return model, agree


def agreement(name, pairs):
    rows = []
    for i, (exact, approx) in enumerate(pairs):
        rows.append([name, i, f"{spearmanr(exact.flatten(), approx.flatten())[0]:.3f}",
                     f"{topk_overlap(exact, approx, 20):.2f}", f"{topk_overlap(exact, approx, 100):.2f}",
                     f"{overlap(exact, approx):.3f}"])
    return rows


# --- (c) roofline -------------------------------------------------------------------------------


def matmul_gflops(m: int, k: int, n: int, seconds: float = 2.0) -> float:
    a, b = torch.randn(m, k), torch.randn(k, n)
    a @ b
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        count += 1
    return 2 * m * k * n * count / (time.perf_counter() - t0) / 1e9


def minimal_flops(model, steps: int, prompt_len: int) -> float:
    """FLOPs of exact IG for one answer token, counting only what exactness needs: for each layer
    l and step k, layers l+1.. at one position forward, the unembedding, and the backward (input
    gradients only, as many FLOPs as the forward) down to layer l's MLP output; plus one clean
    pass over the prompt. Norms, softmax and elementwise work are not counted."""
    cfg = model.cfg
    block = sum(p.numel() for n, p in model.original_model.named_parameters()
                if p.ndim == 2 and (".layers.0." in n or ".h.0." in n))
    attn = 2 * 2 * prompt_len * cfg.n_heads * cfg.d_head  # scores + weighted sum over the context
    per_block = 2 * block + attn
    mlp_out = 2 * cfg.d_mlp * cfg.d_model
    unembed = 2 * cfg.d_model * cfg.d_vocab
    total = 0.0
    for l in range(cfg.n_layers):
        fwd = mlp_out + (cfg.n_layers - 1 - l) * per_block + unembed
        total += steps * 2 * fwd
    return total + prompt_len * cfg.n_layers * per_block + unembed


def part_c(model, fast_seconds: float, prompt_len: int):
    cfg = model.cfg
    shapes = {"unembed 64x640x262144": (64, cfg.d_model, cfg.d_vocab), "MLP 64x640x2048": (64, cfg.d_model, cfg.d_mlp),
              "square 1024^3": (1024, 1024, 1024)}
    rates = {k: matmul_gflops(*v) for k, v in shapes.items()}
    peak = max(rates.values())
    flops = minimal_flops(model, 20, prompt_len)
    roof = flops / (peak * 1e9)
    print(f"(c) roofline, Gemma 3 270M, m = 20, prompt of {prompt_len} tokens, one answer token")
    table([[k, f"{v:.1f}"] for k, v in rates.items()], ["matmul", "GFLOP/s measured (fp32, torch threads = %d)"
                                                          % torch.get_num_threads()])
    table([[f"{flops / 1e9:.0f}", f"{peak:.1f}", f"{roof:.2f}", f"{fast_seconds:.2f}", f"{100 * roof / fast_seconds:.0f}%"]],
          ["minimal GFLOP", "best GFLOP/s", "roofline s", "fast s", "fast at % of roofline"])


# --- (d) scaling --------------------------------------------------------------------------------


def part_d(model, repeats: int):
    from lakn.attribution import attribute_queries

    base = "The capital of France is Paris. Berlin is the capital of Germany. "
    toks = model.to_tokens(base * 20)[0]
    rows = []
    for n_prompt, steps, n_answer, n_queries in [(8, 20, 1, 1), (32, 20, 1, 1), (128, 20, 1, 1), (8, 5, 1, 1),
                                                 (8, 40, 1, 1), (8, 20, 3, 1), (8, 20, 1, 8), (8, 20, 1, 32)]:
        # equal-length windows of the same text: queries that can share passes
        qs = [EncodedQuery(toks[i : i + n_prompt], toks[i + n_prompt : i + n_prompt + n_answer])
              for i in range(n_queries)]
        fast = "-"
        mem = None
        if n_queries <= 8:
            with PeakRSS() as mem:
                t_fast, _ = timed(lambda: attribute_queries(model, qs, steps=steps, attribution="fast"), repeats)
            fast = f"{t_fast / n_queries:.2f}"
        t_apx, _ = timed(lambda: attribute_queries(model, qs, attribution="approx"), repeats)
        rows.append([n_prompt, steps, n_answer, n_queries, fast, f"{t_apx / n_queries:.3f}",
                     "-" if mem is None else f"{mem.mib:.0f}"])
    print("(d) scaling, Gemma 3 270M (seconds per query; several queries go through attribute_queries together)")
    table(rows, ["prompt tokens", "steps m", "answer tokens", "queries", "fast s", "approx s",
                 "peak RSS growth MiB (fast)"])


# --- (e) bounds and shared exact passes --------------------------------------------------------


def part_e(model, repeats: int):
    """What one approx query cannot avoid streaming on this machine, and exact passes shared by
    queries when each query has few rows (a 4-layer subset)."""
    from lakn.attribution import attribute_queries
    from lakn.objective import unembed_target_probability
    from lakn.tokens import logits_at

    weight = model.unembed.original_component.weight.detach()
    h = torch.randn(1, weight.shape[1])
    q = gemma_queries(model)[0][1]

    def fused_row():
        x = h.clone().requires_grad_(True)
        torch.autograd.grad(unembed_target_probability(x, weight, 0).sum(), x)

    with torch.no_grad():
        t_matvec, _ = timed(lambda: h @ weight.T, max(repeats, 5))
        t_blocks, _ = timed(lambda: logits_at(model, q.prompt[None], torch.zeros(0, dtype=torch.long)),
                            max(repeats, 5))
    t_fused, _ = timed(fused_row, max(repeats, 5))
    t_apx, _ = timed(lambda: integrated_gradients(model, q, attribution="approx", first_token_only=True), max(repeats, 3))
    print("(e) one approx query on Gemma 3 270M: what it streams (seconds, best of 5)")
    table([[f"{t_matvec:.3f}", f"{t_fused:.3f}", f"{t_blocks:.3f}", f"{t_apx:.3f}"]],
          ["1-row unembedding matvec", "fused objective, 1 row, forward + backward",
           f"forward over the {len(q.prompt)}-token prompt, no unembedding", "approx, whole query"])

    qs = demo_queries(model, 16)
    kw = dict(steps=20, first_token_only=True, layers=[10, 12, 14, 16])
    t_alone, alone = timed(lambda: [integrated_gradients(model, x, **kw) for x in qs], repeats)
    t_shared, shared = timed(lambda: attribute_queries(model, qs, **kw), repeats)
    diff = max(float((a.attributions - b.attributions).abs().max() / b.attributions.abs().max())
               for a, b in zip(shared, alone))
    print(f"(e2) exact IG on layers 10, 12, 14, 16 (m = 20), {len(qs)} demo queries, seconds per query")
    table([[f"{t_alone / len(qs):.3f}", f"{t_shared / len(qs):.3f}", f"{diff:.1e}"]],
          ["one query at a time", "equal-length queries share passes", "max rel diff"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="a,b,c,d,e")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}\n")
    agree = []
    if "a" in parts:
        agree += agreement("gpt2-small-shape (hook_pre)", part_a(args.repeats))
    if parts & {"b", "c", "d", "e"}:
        model, pairs = part_b(args.repeats) if "b" in parts else (None, [])
        agree += agreement("gemma-3-270m", pairs)
        if model is None:
            from lakn.models import load_model
            model = load_model()
        if "c" in parts:
            q = gemma_queries(model)[0][1]
            t_fast, _ = timed(lambda: integrated_gradients(model, q, steps=20, attribution="fast", first_token_only=True),
                              args.repeats)
            part_c(model, t_fast, len(q.prompt))
        if "d" in parts:
            part_d(model, args.repeats)
        if "e" in parts:
            part_e(model, args.repeats)
    if agree:
        print("approx (activation x gradient, one pass) vs exact IG (fast path, m = 20)")
        table(agree, ["model", "query", "Spearman", "top-20 overlap", "top-100 overlap", "Jaccard >=0.2max"])


if __name__ == "__main__":
    main()
