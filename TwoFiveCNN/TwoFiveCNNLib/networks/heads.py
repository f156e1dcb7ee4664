"""Stage-2 heads: from a study's stack of slice embeddings to a study-level class.

The reference flattens exactly 64 embeddings into an MLP, tying the model to one slice count and
to absolute slice positions. :class:`AttentionHead` instead pools a variable number of slices with
learned attention, which also says which slices drove the decision.
"""

from __future__ import annotations

import torch
from torch import nn


class AttentionHead(nn.Module):
    """Gated attention pooling over slices with a little inter-slice context.

    embeddings (B, S, D) -> LayerNorm -> Linear to ``hidden`` -> + 1D convolution along slices
    (residual, so neighbouring slices inform each other without losing the slice's own evidence)
    -> gated attention (Ilse et al. 2018: a = w^T (tanh(V h) * sigmoid(U h)), softmax over valid
    slices) -> attention-weighted mean -> dropout -> Linear.

    Masked slices are zeroed before the context convolution and get zero attention, so padding a
    study with masked slices of any content leaves its outputs unchanged.
    """

    def __init__(
        self,
        embedding_dim: int,
        n_classes: int,
        hidden: int = 128,
        context_kernel: int = 3,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        if context_kernel < 1 or context_kernel % 2 == 0:
            raise ValueError(
                f"context_kernel must be odd and positive (got {context_kernel}) to keep slices aligned."
            )
        self.project = nn.Sequential(nn.LayerNorm(embedding_dim), nn.Linear(embedding_dim, hidden), nn.GELU())
        # Zero padding along slices: any slice count works, and a padded study sees the same zeros.
        self.context = nn.Conv1d(hidden, hidden, context_kernel, padding=context_kernel // 2)
        self.activation = nn.GELU()
        self.attention_v = nn.Linear(hidden, hidden)
        self.attention_u = nn.Linear(hidden, hidden)
        self.attention_w = nn.Linear(hidden, 1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, n_classes)

    def forward(
        self,
        embeddings: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, n_classes) and attention (B, S): sums to 1 over valid slices, 0 on masked ones."""
        batch, slices, _ = embeddings.shape
        if mask is None:
            mask = torch.ones(batch, slices, dtype=torch.bool, device=embeddings.device)
        if not bool(mask.any(dim=1).all()):
            raise ValueError("every study needs at least one unmasked slice.")
        valid = mask.unsqueeze(-1)
        # torch.where rather than multiplication: masked slices may hold anything, even NaN.
        h = torch.where(valid, self.project(torch.where(valid, embeddings, 0.0)), 0.0)
        h = h + self.activation(self.context(h.transpose(1, 2)).transpose(1, 2))
        h = torch.where(valid, h, 0.0)
        scores = self.attention_w(
            torch.tanh(self.attention_v(h)) * torch.sigmoid(self.attention_u(h))
        ).squeeze(-1)
        attention = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1)
        pooled = torch.einsum("bs,bsh->bh", attention, h)
        return self.classifier(self.dropout(pooled)), attention
