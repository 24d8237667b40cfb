"""L2-normalised vector quantiser with the rotation trick and the entropy loss.

Codes are chosen by cosine similarity against a unit-norm codebook. The rotation trick (Fifty et al., 2024)
replaces the straight-through estimator: the forward value is the code vector, the backward pass rotates
the gradient from the code onto the encoder output.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

USAGE_WINDOW = 65536  # number of recent code indices kept for the codebook-usage statistic


def entropy_loss(affinity: torch.Tensor, temperature: float = 0.01) -> torch.Tensor:
    """Per-sample entropy minus entropy of the batch-mean distribution (low = confident and diverse codes)."""
    logits = affinity / temperature
    probs = F.softmax(logits, dim=-1)
    log_probs = F.log_softmax(logits + 1e-5, dim=-1)
    avg_probs = probs.mean(dim=0)
    avg_entropy = -(avg_probs * torch.log(avg_probs + 1e-5)).sum()
    sample_entropy = -(probs * log_probs).sum(dim=-1).mean()
    return sample_entropy - avg_entropy


def rotate_to(z: torch.Tensor, q0: torch.Tensor) -> torch.Tensor:
    """Rotation trick on rows: forward value ~= q0, gradient reaches ``z`` through a fixed rotation+scale."""
    e = z / z.norm(dim=-1, keepdim=True)
    e_norm = e.norm(dim=-1, keepdim=True)
    q0_norm = q0.norm(dim=-1, keepdim=True)
    u = (e / (e_norm + 1e-6)).detach()
    q = (q0 / (q0_norm + 1e-6)).detach()
    w = F.normalize(u + q, dim=-1, eps=0.0).detach()
    r = e - 2 * (e * w).sum(-1, keepdim=True) * w + 2 * (e * u).sum(-1, keepdim=True) * q
    return r * (q0_norm / (e_norm + 1e-6)).detach()


class VectorQuantizer(nn.Module):
    def __init__(self, n_e: int, e_dim: int, beta: float = 0.25, entropy_loss_ratio: float = 0.0,
                 l2_norm: bool = True, show_usage: bool = True, rot: bool = True):
        super().__init__()
        self.n_e, self.e_dim, self.beta = n_e, e_dim, beta
        self.entropy_loss_ratio, self.l2_norm = entropy_loss_ratio, l2_norm
        self.show_usage, self.rot = show_usage, rot
        self.embedding = nn.Embedding(n_e, e_dim)
        with torch.no_grad():
            self.embedding.weight.uniform_(-1.0 / n_e, 1.0 / n_e)
            if l2_norm:
                self.embedding.weight.copy_(F.normalize(self.embedding.weight, p=2, dim=-1))
        self.register_buffer("codebook_used", torch.zeros(USAGE_WINDOW))

    def codebook(self) -> torch.Tensor:
        w = self.embedding.weight
        return F.normalize(w, p=2, dim=-1) if self.l2_norm else w

    def forward(self, z: torch.Tensor):
        """z [B, C, H, W] -> (z_q [B, C, H, W], [vq, commit, entropy, usage], (None, None, indices [B*H*W]))."""
        z = z.permute(0, 2, 3, 1).contiguous()
        z_flat = z.view(-1, self.e_dim)
        if self.l2_norm:
            z = F.normalize(z, p=2, dim=-1)
            z_flat = F.normalize(z_flat, p=2, dim=-1)
        emb = self.codebook()
        dist = (z_flat.pow(2).sum(1, keepdim=True) + emb.pow(2).sum(1)
                - 2 * torch.einsum("nd,kd->nk", z_flat, emb))
        indices = torch.argmin(dist, dim=1)
        z_q = emb[indices].view(z.shape)

        usage, vq_loss, commit_loss, ent_loss = 0, None, None, None
        if self.training:
            if self.show_usage:
                self._record_usage(indices)
                usage = torch.unique(self.codebook_used).numel() / self.n_e
            vq_loss = torch.mean((z_q - z.detach()) ** 2)
            commit_loss = self.beta * torch.mean((z_q.detach() - z) ** 2)
            ent_loss = self.entropy_loss_ratio * entropy_loss(-dist) if self.entropy_loss_ratio > 0 else 0

        if self.rot:
            z_q = rotate_to(z.view(-1, self.e_dim), z_q.view(-1, self.e_dim)).view(z.shape)
        else:
            z_q = z + (z_q - z).detach()
        z_q = z_q.permute(0, 3, 1, 2).contiguous()
        return z_q, [vq_loss, commit_loss, ent_loss, usage], (None, None, indices)

    @torch.no_grad()
    def _record_usage(self, indices: torch.Tensor) -> None:
        m = indices.numel()
        if m >= USAGE_WINDOW:
            self.codebook_used.copy_(indices[-USAGE_WINDOW:].float())
            return
        self.codebook_used[:-m] = self.codebook_used[m:].clone()
        self.codebook_used[-m:] = indices.float()

    def get_codebook_entry(self, indices: torch.Tensor, shape=None, channel_first: bool = True) -> torch.Tensor:
        """Code indices -> code vectors; with ``shape=(B, C, H, W)`` returns [B, C, H, W]."""
        z_q = self.codebook()[indices]
        if shape is None:
            return z_q
        if channel_first:
            b, c, h, w = shape
            return z_q.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous()
        return z_q.view(shape)
