"""Minitron-style activation importance of heads, MLP channels and embedding channels (Muralidharan et al., 2024).

Scores, exactly (``a`` an activation of one sequence ``b`` at position ``s``; aggregation: mean over the sequence,
then L2 over sequences, the combination Minitron reports best):

- head ``h`` of block ``i``:       sqrt(sum_b (mean_s ||o_{b,s,h}||_2)^2), ``o_h`` the head's attention output
  (its slice of the input to ``attn.proj``);
- MLP channel ``c`` of block ``i``: sqrt(sum_b (mean_s |m_{b,s,c}|)^2), ``m`` the input to ``mlp.proj``
  (the activated channel, e.g. silu(fc_1 x) * fc_2 x);
- embedding channel ``e``:         sum over every norm inside the blocks (norm_1, norm_2) of
  sqrt(sum_b (mean_s |n_{b,s,e}|)^2), ``n`` that norm's output.

Absolute values are taken before the mean so that channels whose activations change sign are not scored as
unused. Hooks only read activations; the model's outputs are untouched. Each hook reduces its activation at once
(absolute values and norms in the model's dtype, sums over positions accumulated in float32) and keeps only the
per-sequence means, never a float32 copy of an activation.
"""

from __future__ import annotations


def activation_importance(model, sequences, batch_size: int = 4) -> dict:
    """Scores of a LitGPT ``GPT`` on ``sequences`` [N, T]: ``{"head": [L, H], "intermediate": [L, I], "hidden": [d]}``."""
    import torch

    config = model.config
    n_layer, hs = config.n_layer, config.head_size
    sums = {
        "head": torch.zeros(n_layer, config.n_head, dtype=torch.float64),
        "intermediate": torch.zeros(n_layer, config.intermediate_size, dtype=torch.float64),
        "hidden": torch.zeros(n_layer, 2, config.n_embd, dtype=torch.float64),
    }

    def add(kind, index, per_sequence):  # per_sequence [B, units]: the sequence means, squared and summed over B
        sums[kind][index] += per_sequence.double().pow(2).sum(0).cpu()

    def mean_abs(x):  # [B, T, units] -> [B, units] in float32, from one |x| in x's dtype
        return x.abs().sum(1, dtype=torch.float32) / x.shape[1]

    handles = []
    for i, block in enumerate(model.transformer.h):
        def head_hook(module, args, i=i):
            y = args[0]
            norms = torch.linalg.vector_norm(y.unflatten(-1, (config.n_head, hs)), dim=-1, dtype=torch.float32)
            add("head", i, norms.mean(1))  # [B, T, H] only

        def mlp_hook(module, args, i=i):
            add("intermediate", i, mean_abs(args[0]))

        handles.append(block.attn.proj.register_forward_pre_hook(head_hook))
        handles.append(block.mlp.proj.register_forward_pre_hook(mlp_hook))
        for k, norm in enumerate((block.norm_1, block.norm_2)):
            if isinstance(norm, torch.nn.Identity) or norm is None:
                continue

            def norm_hook(module, args, output, index=(i, k)):
                add("hidden", index, mean_abs(output))

            handles.append(norm.register_forward_hook(norm_hook))
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for start in range(0, len(sequences), batch_size):
                model(sequences[start:start + batch_size].to(device))
    finally:
        for handle in handles:
            handle.remove()
    return {"head": sums["head"].sqrt(), "intermediate": sums["intermediate"].sqrt(),
            "hidden": sums["hidden"].sqrt().sum((0, 1))}
