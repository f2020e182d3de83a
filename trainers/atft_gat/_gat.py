"""Graph attention over the stocks of one date (or several disjoint dates), written in plain torch.

The edge softmax is vectorised in-house (``scatter_reduce`` 'amax' + ``index_add_``) instead of
using torch_geometric / DGL: no extra compiled dependency whose wheels must match the installed
torch and CUDA, and it runs unchanged on any device torch supports. There is no Python loop per
edge or per node, so the cost is a few gathers and scatters over the E edges.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LEAKY_SLOPE = 0.2  # GAT's LeakyReLU slope (Velickovic et al. 2018), kept by GATv2


def edge_softmax(scores: Tensor, dst: Tensor, num_nodes: int) -> Tensor:
    """Softmax of ``scores`` (E, heads) over the in-edges of each destination node.

    For every node i and head h, the weights of the edges with ``dst == i`` sum to 1; nodes
    without in-edges simply own no weights. The per-destination maximum is subtracted first so
    ``exp`` cannot overflow. It is detached because softmax does not depend on it, so its
    gradient would be zero anyway. Half-precision scores are upcast to float32 first.
    """
    if scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.float()
    heads = scores.shape[1]
    index = dst.unsqueeze(1).expand(-1, heads)  # (E, heads)
    node_max = scores.new_full((num_nodes, heads), float("-inf"))
    node_max = node_max.scatter_reduce(0, index, scores.detach(), reduce="amax")  # (N, heads)
    ex = torch.exp(scores - node_max[dst])  # (E, heads), each <= 1
    denom = scores.new_zeros((num_nodes, heads)).index_add_(0, dst, ex)  # (N, heads)
    return ex / denom[dst]


class GraphAttentionLayer(nn.Module):
    """Multi-head GATv2-style attention (Brody et al. 2022) with the edge weight as a feature.

    score(j -> i) = a_h . LeakyReLU(W_s h_j + W_d h_i + w_e * corr_ij), softmaxed over the
    in-edges of i; the message is W_s h_j; heads are concatenated, projected, and added back to
    h_i with LayerNorm. A node without in-edges keeps its input state unchanged, so an isolated
    stock is predicted from its own history alone.
    """

    def __init__(self, hidden_size: int, *, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.head_dim = hidden_size // heads
        self.src_proj = nn.Linear(hidden_size, hidden_size)
        self.dst_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        # The correlation enters the score per channel, so its sign and size can raise or lower
        # attention differently in each head.
        self.edge_proj = nn.Linear(1, hidden_size, bias=False)
        self.attn_vec = nn.Parameter(torch.empty(heads, self.head_dim))
        nn.init.xavier_uniform_(self.attn_vec)
        self.attn_dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden_size, hidden_size)
        self.out_dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(hidden_size)

    def forward(
        self, h: Tensor, src: Tensor, dst: Tensor, edge_weight: Tensor
    ) -> tuple[Tensor, Tensor]:
        """h (N, H), src/dst (E,), edge_weight (E,) -> (new h (N, H), attention (E, heads))."""
        n, hidden = h.shape
        hs = self.src_proj(h).view(n, self.heads, self.head_dim)  # (N, heads, d)
        hd = self.dst_proj(h).view(n, self.heads, self.head_dim)
        he = self.edge_proj(edge_weight.unsqueeze(1).to(h.dtype))  # (E, H)
        msg = hs[src]  # (E, heads, d)
        e = msg + hd[dst] + he.view(-1, self.heads, self.head_dim)
        scores = (F.leaky_relu(e, LEAKY_SLOPE) * self.attn_vec).sum(-1)  # (E, heads)
        alpha = edge_softmax(scores, dst, n)  # (E, heads), at least float32
        weighted = msg.to(alpha.dtype) * self.attn_dropout(alpha).unsqueeze(-1)  # (E, heads, d)
        agg = weighted.new_zeros((n, self.heads, self.head_dim)).index_add_(0, dst, weighted)
        update = self.out_proj(agg.reshape(n, hidden).to(h.dtype))
        new_h = self.norm(h + self.out_dropout(update))  # (N, H)
        has_in = torch.zeros(n, dtype=torch.bool, device=h.device)
        has_in[dst] = True
        return torch.where(has_in.unsqueeze(1), new_h, h), alpha


class GraphAttention(nn.Module):
    """A stack of ``layers`` graph-attention layers; a node's state sees ``layers`` hops."""

    def __init__(self, hidden_size: int, *, layers: int, heads: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(
            GraphAttentionLayer(hidden_size, heads=heads, dropout=dropout) for _ in range(layers)
        )

    def forward(self, h: Tensor, edge_index: Tensor, edge_weight: Tensor) -> tuple[Tensor, Tensor]:
        """Returns the new states (N, H) and the last layer's attention (E, heads)."""
        src, dst = edge_index[0], edge_index[1]
        alpha = h.new_zeros((0, self.layers[0].heads)) if len(self.layers) else h.new_zeros(0)
        for layer in self.layers:
            h, alpha = layer(h, src, dst, edge_weight)
        return h, alpha
