"""Synapse layouts for the fused LTC kernels: a wiring mask as a list of its existing synapses.

An LTC synapse layer maps presynaptic values x (S of them) to, for every postsynaptic neuron u,

    num_u = Σ_s w_su σ(sigma_su (x_s - mu_su)) erev_su,   den_u = Σ_s w_su σ(...)

over the synapses s → u present in the mask. The reference multiplies the full (S, U) grid by
the mask; an AutoNCP(64) wiring keeps ~12 % of the recurrent and ~27 % of the sensory pairs, so
computing only the existing pairs saves most of the work. Masked pairs contribute exactly 0 in the
reference (w · 0), and their parameter gradients are exactly 0 too, so skipping them is exact.

Two layouts share one set of formulas (see `synapse_forward` / `synapse_backward`):
    DenseLayout    parameters as (S, U) grids (mask folded into w), tensors (B, S, U)
    SparseLayout   parameters as (P,) vectors over the existing pairs, tensors (B, P)

Shape legend: B rows (batch or batch x time), S presynaptic, U postsynaptic, P synapses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SynapseIndex:
    """The nonzero pairs of a mask (S, U), sorted by postsynaptic neuron (CSR by post).

    pre_P, post_P: int64 (P,) pair endpoints; ptr_U1: int64 (U+1,) offsets of each post's run;
    scale_P: the mask values on the pairs (1 for ncps wirings; kept so any mask is honoured).
    """

    pre_P: torch.Tensor
    post_P: torch.Tensor
    ptr_U1: torch.Tensor
    scale_P: torch.Tensor
    n_pre: int
    n_post: int

    @staticmethod
    def from_mask(mask_SU: torch.Tensor) -> "SynapseIndex":
        mask_SU = mask_SU.detach()
        post_P, pre_P = torch.nonzero(mask_SU.t(), as_tuple=True)  # row-major: sorted by post
        S, U = mask_SU.shape
        counts_U = torch.bincount(post_P, minlength=U)
        ptr_U1 = torch.zeros(U + 1, dtype=torch.int64, device=mask_SU.device)
        ptr_U1[1:] = torch.cumsum(counts_U, 0)
        return SynapseIndex(pre_P, post_P, ptr_U1, mask_SU[pre_P, post_P], S, U)

    @property
    def density(self) -> float:
        return self.pre_P.numel() / max(1, self.n_pre * self.n_post)

    def to(self, device: torch.device) -> "SynapseIndex":
        if self.pre_P.device == device:
            return self
        move = lambda t: t.to(device)  # noqa: E731
        return SynapseIndex(
            move(self.pre_P), move(self.post_P), move(self.ptr_U1), move(self.scale_P),
            self.n_pre, self.n_post,
        )  # fmt: skip

    def gather(self, param_SU: torch.Tensor) -> torch.Tensor:
        """The pair values (P,) of a (S, U) grid; differentiable (grads scatter back)."""
        return param_SU[self.pre_P, self.post_P]

    def pack(
        self, w_SU: torch.Tensor, mu_SU: torch.Tensor, sigma_SU: torch.Tensor, erev_SU: torch.Tensor
    ) -> torch.Tensor:
        """(4, P) rows w·mask, mu, sigma, erev of the existing pairs."""
        return torch.stack(
            [
                self.gather(w_SU) * self.scale_P.to(w_SU.dtype),
                self.gather(mu_SU),
                self.gather(sigma_SU),
                self.gather(erev_SU),
            ]
        )


class DenseLayout:
    """Pairs as a full (S, U) grid; x_BS broadcasts along U, sums over S give the posts."""

    def __init__(self, n_pre: int, n_post: int) -> None:
        self.n_pre, self.n_post = n_pre, n_post

    def pre(self, x_BS: torch.Tensor) -> torch.Tensor:
        return x_BS.unsqueeze(-1)  # (B, S, 1)

    def post(self, y_BU: torch.Tensor) -> torch.Tensor:
        return y_BU.unsqueeze(1)  # (B, 1, U)

    def sum_post(self, y_BSU: torch.Tensor) -> torch.Tensor:
        return y_BSU.sum(1)

    def sum_pre(self, y_BSU: torch.Tensor) -> torch.Tensor:
        return y_BSU.sum(2)


class SparseLayout:
    """Pairs as a (P,) list; gathers bring x to the pairs, index_add brings pairs to neurons."""

    def __init__(self, index: SynapseIndex) -> None:
        self.index = index
        self.n_pre, self.n_post = index.n_pre, index.n_post

    def pre(self, x_BS: torch.Tensor) -> torch.Tensor:
        return x_BS.index_select(1, self.index.pre_P)  # (B, P)

    def post(self, y_BU: torch.Tensor) -> torch.Tensor:
        return y_BU.index_select(1, self.index.post_P)

    def sum_post(self, y_BP: torch.Tensor) -> torch.Tensor:
        out_BU = y_BP.new_zeros(y_BP.shape[0], self.n_post)
        return out_BU.index_add_(1, self.index.post_P, y_BP)

    def sum_pre(self, y_BP: torch.Tensor) -> torch.Tensor:
        out_BS = y_BP.new_zeros(y_BP.shape[0], self.n_pre)
        return out_BS.index_add_(1, self.index.pre_P, y_BP)


Layout = DenseLayout | SparseLayout


def synapse_forward(
    layout: Layout, x_BS: torch.Tensor, params: tuple[torch.Tensor, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(num_BU, den_BU) of one synapse layer; params = (w·mask, mu, sigma, erev) in layout form."""
    w, mu, sigma, erev = params
    a = w * torch.sigmoid(sigma * (layout.pre(x_BS) - mu))  # (B, S, U) or (B, P)
    return layout.sum_post(a * erev), layout.sum_post(a)


def synapse_backward(
    layout: Layout,
    x_BS: torch.Tensor,
    params: tuple[torch.Tensor, ...],
    gnum_BU: torch.Tensor,
    gden_BU: torch.Tensor,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Recomputing backward of synapse_forward: (grad x_BS, [grad w, mu, sigma, erev]).

    With z = sigma (x - mu), s = σ(z), a = w s:
        dL/da = gnum erev + gden,   dL/dz = dL/da · w s (1 - s),
        dL/derev = Σ gnum a,  dL/dw = Σ dL/da s,  dL/dsigma = Σ dL/dz (x - mu),
        dL/dmu = -sigma Σ dL/dz,  dL/dx = Σ_post dL/dz sigma.
    """
    w, mu, sigma, erev = params
    d = layout.pre(x_BS) - mu
    s = torch.sigmoid(sigma * d)
    gn = layout.post(gnum_BU)
    da = gn * erev + layout.post(gden_BU)
    dz = da * w * s * (1.0 - s)
    grads = [
        (da * s).sum(0),
        -sigma * dz.sum(0),
        (dz * d).sum(0),
        (gn * (w * s)).sum(0),
    ]
    return layout.sum_pre(dz * sigma), grads
