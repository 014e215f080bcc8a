"""Lazy-layer analysis of a reference model, and choosing a child's blocks from it.

Every metric is computed per sequence while the model runs (forward hooks), so nothing of size T x T outlives the
block that produced it. Definitions (A is one head's post-softmax attention map on one sequence, T x T, causal):

- rank: the smallest k whose k largest singular values of A hold at least ``tau`` of sum(sigma^2) (tau = 0.9),
  i.e. of ||A||_F^2. Averaged over sequences per head; a block's ``max_rank`` is its largest head average, its
  ``mean_rank`` their mean. A block is lazy when ``max_rank`` is 1: every head attends the same way from every
  query (typically all mass on the first token).
- column mass: column j's share of ||A||_F^2. ``mass_columns`` is the fewest columns that reach ``eta`` (0.9) of it,
  ``top_column_mass`` the largest single share (1.0 for an attention sink). Both averaged over heads and sequences.
- entropy: each query row's entropy divided by log of the number of keys it may see (rows with one key left out),
  averaged over rows, heads and sequences; 0 = every query attends to one key, 1 = uniform over all it can see.
- block influence (ShortGPT): 1 - cos(x, block(x)) between a block's input and output residual streams,
  averaged over tokens and sequences.
- angular distance (Gromov et al.): d(l, m) = arccos(cos(x_l, x_{l+m})) / pi at the last token of each sequence,
  averaged over sequences, where x_l is the input of block l and x_K the last block's output (before the final norm).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Sequence

from litgpt_inheritune.errors import InherituneError


# --- metrics of one attention map (pure, checked against hand-computed values in the tests) ----------------------


def attention_rank(attention, tau: float = 0.9):
    """Per head: the smallest k whose top-k singular values hold >= tau of the squared Frobenius norm. [H, T, T] -> [H]."""
    import torch

    sigma2 = torch.linalg.svdvals(attention.float()) ** 2  # [H, T], descending
    share = sigma2.cumsum(-1) / sigma2.sum(-1, keepdim=True)
    return (share < tau - 1e-6).sum(-1) + 1


def column_mass(attention, eta: float = 0.9):
    """Per head: (fewest columns holding >= eta of ||A||_F^2, the largest column's share). [H, T, T] -> ([H], [H])."""
    import torch

    columns = (attention.float() ** 2).sum(-2)  # [H, T]
    share = columns / columns.sum(-1, keepdim=True)
    ordered = torch.sort(share, dim=-1, descending=True).values
    count = (ordered.cumsum(-1) < eta - 1e-6).sum(-1) + 1
    return count, ordered[:, 0]


def normalized_entropy(attention):
    """Per head: mean over query rows (with >= 2 visible keys) of entropy / log(visible keys). [H, T, T] -> [H]."""
    import torch

    p = attention.float()
    T = p.shape[-1]
    plogp = torch.where(p > 0, p * torch.log(p), torch.zeros_like(p))
    entropy = -plogp.sum(-1)  # [H, T]
    visible = torch.arange(1, T + 1, dtype=p.dtype, device=p.device)
    rows = visible > 1
    if not rows.any():
        return torch.zeros(p.shape[0])
    return (entropy[:, rows] / torch.log(visible[rows])).mean(-1)


def attention_probabilities(attn_module, q, k, mask):
    """The post-softmax attention map that LitGPT's ``scaled_dot_product_attention`` applies. -> [B, H, T, T]."""
    import torch

    config = attn_module.config
    latent = "Latent" in type(attn_module).__name__  # multi-head latent attention scales by its q/k head size
    head_dim = getattr(config, "qk_head_dim", None) if latent else None
    scale = 1.0 / math.sqrt(config.attention_scores_scalar or head_dim or config.head_size)
    scale = scale * getattr(attn_module, "mscale", 1.0) ** 2
    scores = (q.float() @ k.float().mT) * scale
    if config.attention_logit_softcapping is not None:
        from litgpt.model import do_softcapping

        scores = do_softcapping(scores, config.attention_logit_softcapping)
    T, S = scores.shape[-2:]
    if mask is None:
        causal = torch.ones(T, S, dtype=torch.bool, device=scores.device).tril(diagonal=S - T)
        scores = scores.masked_fill(~causal, float("-inf"))
    elif mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    else:
        scores = scores + mask.float()
    return torch.softmax(scores, dim=-1)


# --- running the reference ---------------------------------------------------------------------------------------


def sample_sequences(corpus: Path, tokenizer, n_sequences: int, seq_len: int, seed: int, text_key: str = "text"):
    """``n_sequences`` windows of ``seq_len`` tokens of real text: whole documents in seeded key order (the same
    keys as `litgpt inheritune_data`), concatenated and cut. Streams the corpus twice; keeps only what it needs."""
    import torch

    from litgpt_inheritune.data.subset import document_key, iter_documents

    need = n_sequences * seq_len
    keyed = sorted((document_key(seed, d.source, d.index), d.source, d.index, len(d.text))
                   for d in iter_documents(corpus, text_key=text_key))
    chosen, chars = {}, 0
    for rank, (_, source, index, n_chars) in enumerate(keyed):
        if chars >= 8 * need:  # no tokenizer here yields a token per more than 8 characters of text
            break
        chosen[(source, index)] = rank
        chars += n_chars
    texts = {chosen[(d.source, d.index)]: d.text for d in iter_documents(corpus, text_key=text_key)
             if (d.source, d.index) in chosen}
    ids: list[int] = []
    for rank in sorted(texts):
        ids.extend(tokenizer.encode(texts[rank], bos=False, eos=True).tolist())
        if len(ids) >= need:
            break
    if len(ids) < need:
        raise InherituneError(
            f"the data holds {len(ids):,} tokens, fewer than --n_sequences x --seq_len = {need:,}; give more text"
        )
    return torch.tensor(ids[:need], dtype=torch.long).view(n_sequences, seq_len)


def check_sampling(config, reference_dir: Path, data: Path, n_sequences: int, seq_len: int, batch_size: int) -> None:
    """The cheap checks before a reference runs on ``sample_sequences`` of ``data`` (analysis, width calibration)."""
    from litgpt_inheritune.checkpoint import has_tokenizer
    from litgpt_inheritune.data.subset import corpus_files

    for name, value in (("--n_sequences", n_sequences), ("--seq_len", seq_len), ("--batch_size", batch_size)):
        if value < 1:
            raise InherituneError(f"{name} must be at least 1, got {value}")
    if seq_len > config.block_size:
        raise InherituneError(f"--seq_len {seq_len} exceeds the reference's context of {config.block_size} tokens")
    if not has_tokenizer(reference_dir):
        raise InherituneError(f"{str(reference_dir)!r} has no tokenizer; --data is encoded with it")
    corpus_files(data)


def hooked_model(config, state_dict, device: str = "auto"):
    """The reference as a plain ``GPT`` for forward passes with hooks: on CUDA in bf16 (``auto`` picks CUDA when
    available), else on CPU in float32."""
    import torch
    from litgpt import GPT

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = GPT(config)
    model.load_state_dict(state_dict)
    return model.to(torch.bfloat16) if device.startswith("cuda") else model


class _Recorder:
    """Forward hooks on every block: attention metrics per head and residual-stream statistics."""

    def __init__(self, model, tau: float, eta: float) -> None:
        import torch

        self.model, self.tau, self.eta = model, tau, eta
        K, H = model.config.n_layer, model.config.n_head
        zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64)  # noqa: E731
        self.rank, self.mass, self.top, self.entropy = zeros(K, H), zeros(K, H), zeros(K, H), zeros(K, H)
        self.influence = zeros(K)
        self.last = []  # per sequence: [K + 1, C] last-token residual streams
        self.sequences = 0
        self._current: list = []
        self._handles = []
        self._originals = {}
        for index, block in enumerate(model.transformer.h):
            self._handles.append(block.register_forward_hook(self._block_hook(index)))
            attn = block.attn
            self._originals[index] = attn.scaled_dot_product_attention
            attn.scaled_dot_product_attention = self._attention_hook(index, attn, attn.scaled_dot_product_attention)

    def _attention_hook(self, index, attn, original):
        def hooked(q, k, v, mask=None):
            import torch

            for i in range(q.shape[0]):  # one sequence's [H, T, T] maps at a time, freed before the next
                sequence = attention_probabilities(attn, q[i : i + 1], k[i : i + 1], mask)[0]
                self.rank[index] += attention_rank(sequence, self.tau).double().cpu()
                count, top = column_mass(sequence, self.eta)
                self.mass[index] += count.double().cpu()
                self.top[index] += top.double().cpu()
                self.entropy[index] += normalized_entropy(sequence).double().cpu()
                del sequence
            with torch.no_grad():
                return original(q, k, v, mask)

        return hooked

    def _block_hook(self, index):
        def hook(module, args, output):
            import torch

            x_in = args[0].float()
            x_out = output.float()
            cos = torch.nn.functional.cosine_similarity(x_in, x_out, dim=-1)  # [B, T]
            self.influence[index] += (1 - cos).mean(-1).sum().double().cpu()
            if index == 0:
                self._current = [x_in[:, -1].double().cpu()]
            self._current.append(x_out[:, -1].double().cpu())

        return hook

    def finish_batch(self, batch_size: int) -> None:
        import torch

        self.last.append(torch.stack(self._current, dim=1))  # [B, K + 1, C]
        self.sequences += batch_size

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        for index, block in enumerate(self.model.transformer.h):
            block.attn.scaled_dot_product_attention = self._originals[index]


def angular_distances(last) -> list[list[float | None]]:
    """d[l][m] = mean over sequences of arccos(cos(x_l, x_{l+m})) / pi; None where l + m > K. last: [N, K + 1, C]."""
    import torch

    N, K1, _ = last.shape
    unit = torch.nn.functional.normalize(last.double(), dim=-1)
    table: list[list[float | None]] = []
    for l in range(K1):
        row: list[float | None] = []
        for m in range(K1):
            if l + m >= K1:
                row.append(None)
                continue
            cos = (unit[:, l] * unit[:, l + m]).sum(-1).clamp(-1, 1)
            row.append(float((torch.arccos(cos) / math.pi).mean()))
        table.append(row)
    return table


def suggest_n(max_rank: Sequence[float], lazy_share: Sequence[float]) -> tuple[int, str]:
    """The child depth the analysis suggests, and why.

    The smallest n >= 1 such that blocks n..K-1 are all lazy (max rank 1) is the clean case. Otherwise the smallest
    n such that at least half of the heads of blocks n..K-1 are rank 1; otherwise K // 2, the paper's starting point.
    """
    K = len(max_rank)
    for n in range(1, K):
        if all(r <= 1.0 + 1e-9 for r in max_rank[n:]):
            return n, f"blocks {n}..{K - 1} are lazy (every head rank 1)"
    for n in range(1, K):
        tail = lazy_share[n:]
        if sum(tail) / len(tail) >= 0.5:
            return n, f"at least half of the heads in blocks {n}..{K - 1} are rank 1"
    return max(1, K // 2), "no run of lazy blocks at the end; K/2, the paper's starting point"


def analyze_model(model, sequences, tau: float = 0.9, eta: float = 0.9, batch_size: int = 4) -> dict:
    """Runs ``model`` (a LitGPT GPT) on ``sequences`` [N, T] and returns every per-block metric."""
    import torch

    K, H = model.config.n_layer, model.config.n_head
    device = next(model.parameters()).device
    model.eval()
    model.max_seq_length = max(model.max_seq_length, sequences.shape[1])
    from tqdm import tqdm

    recorder = _Recorder(model, tau, eta)
    try:
        with torch.no_grad(), tqdm(total=len(sequences), desc="Analysing", unit="seq") as progress:
            for start in range(0, len(sequences), batch_size):
                batch = sequences[start : start + batch_size].to(device)
                model(batch)
                recorder.finish_batch(len(batch))
                progress.update(len(batch))
    finally:
        recorder.close()
    N = recorder.sequences
    rank = recorder.rank / N
    lazy_share = [float(((rank[l] <= 1.0 + 1e-9).double()).mean()) for l in range(K)]
    last = torch.cat(recorder.last)
    distance = angular_distances(last)
    blocks = []
    for l in range(K):
        blocks.append({
            "block": l,
            "max_rank": float(rank[l].max()),
            "mean_rank": float(rank[l].mean()),
            "rank_per_head": [round(float(r), 4) for r in rank[l]],
            "lazy_head_share": lazy_share[l],
            "mass_columns": float((recorder.mass[l] / N).mean()),
            "top_column_mass": float((recorder.top[l] / N).mean()),
            "entropy": float((recorder.entropy[l] / N).mean()),
            "block_influence": float(recorder.influence[l] / N),
            "angular_distance_next": distance[l][1],
        })
    n, reason = suggest_n([b["max_rank"] for b in blocks], lazy_share)
    return {
        "n_blocks": K, "n_heads": H, "sequences": N, "seq_len": int(sequences.shape[1]), "tau": tau, "eta": eta,
        "blocks": blocks, "angular_distance": distance, "suggested_n": n, "suggested_n_reason": reason,
    }


# --- choosing blocks ---------------------------------------------------------------------------------------------


def plot(analysis: dict, path: Path, title: str) -> None:
    """One figure: rank per block and per head, block influence and angular distance, column mass and entropy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = analysis["blocks"]
    x = [b["block"] for b in blocks]
    n = analysis["suggested_n"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
    ax = axes[0][0]
    ax.plot(x, [b["max_rank"] for b in blocks], "o-", label="max rank over heads")
    ax.plot(x, [b["mean_rank"] for b in blocks], "s--", label="mean rank over heads")
    ax.axhline(1, color="grey", lw=0.8)
    ax.set_yscale("log")
    ax.set_title(f"attention rank (energy {analysis['tau']:.2f}); 1 = lazy")
    ax.legend()
    ax = axes[0][1]
    grid = [b["rank_per_head"] for b in blocks]
    image = ax.imshow(list(map(list, zip(*grid))), aspect="auto", cmap="viridis", origin="lower")
    fig.colorbar(image, ax=ax, label="rank")
    ax.set_xlabel("block")
    ax.set_ylabel("head")
    ax.set_title("rank per head")
    ax = axes[1][0]
    ax.plot(x, [b["block_influence"] for b in blocks], "o-", label="block influence 1 - cos(in, out)")
    ax.plot(x, [b["angular_distance_next"] for b in blocks], "s--", label="angular distance to next block")
    ax.set_title("how much each block changes the residual stream")
    ax.legend()
    ax = axes[1][1]
    ax.plot(x, [b["top_column_mass"] for b in blocks], "o-", label="largest column's share of mass")
    ax.plot(x, [b["entropy"] for b in blocks], "s--", label="normalised entropy")
    ax.set_ylim(0, 1.05)
    ax.set_title("attention concentration")
    ax.legend()
    for row in axes:
        for ax in row:
            if ax is not axes[0][1]:
                ax.axvline(n - 0.5, color="red", lw=1, ls=":")
                ax.set_xlabel("block")
    fig.suptitle(f"{title}: suggested n = {n} ({analysis['suggested_n_reason']})")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summarize(blocks: Iterable[dict]) -> str:
    lines = ["| block | max rank | mean rank | lazy heads | top column | entropy | influence | angular |", "|" + "---|" * 8]
    for b in blocks:
        lines.append(
            f"| {b['block']} | {b['max_rank']:.2f} | {b['mean_rank']:.2f} | {b['lazy_head_share']:.2f} | "
            f"{b['top_column_mass']:.2f} | {b['entropy']:.2f} | {b['block_influence']:.3f} | {b['angular_distance_next']:.3f} |"
        )
    return "\n".join(lines)
