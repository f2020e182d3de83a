"""Behaviour of the ATFT-GAT-FAN model: shapes, switches, edge softmax, FAN, heads, learning."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainers.atft_gat._fan import fan_decompose
from trainers.atft_gat._gat import edge_softmax
from trainers.atft_gat._layers import VariableSelection
from trainers.atft_gat.model import ATFTGATFAN, ModelConfig, pinball_loss
from trainers.errors import UserError

torch.set_num_threads(1)

N_FEATURES = 3
TINY = dict(
    hidden_size=8,
    lookback=8,
    attn_heads=2,
    gat_heads=2,
    gat_layers=1,
    fan_top_k=2,
    dropout=0.0,
    gat_dropout=0.0,
    horizons=(1, 5),
    quantiles=(0.1, 0.5, 0.9),
)


def tiny(**overrides: object) -> ModelConfig:
    return ModelConfig(**{**TINY, **overrides})  # type: ignore[arg-type]


def make_model(cfg: ModelConfig, *, seed: int = 0, n_features: int = N_FEATURES) -> ATFTGATFAN:
    torch.manual_seed(seed)
    return ATFTGATFAN(cfg, n_features=n_features)


def inputs(n: int, cfg: ModelConfig, *, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, cfg.lookback, N_FEATURES, generator=torch.Generator().manual_seed(seed))


def random_graph(n: int, e: int, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, n, (2, e), generator=g), torch.rand(e, generator=g) * 2 - 1


def param_names(model: torch.nn.Module) -> set[str]:
    return {name for name, _ in model.named_parameters()}


# ---------------------------------------------------------------- config


def test_config_reports_every_problem_together() -> None:
    with pytest.raises(UserError) as err:
        ModelConfig(hidden_size=30, dropout=1.5, lookback=20, fan_top_k=11, quantiles=(0.9, 0.1))
    msg = str(err.value)
    for fragment in (
        "attn_heads=4: must divide hidden_size=30",
        "gat_heads=4: must divide hidden_size=30",
        "dropout=1.5: must be a number with 0 <= value < 1",
        "fan_top_k=11: must be < lookback//2+1 = 11",
        "quantiles=(0.9, 0.1)",
    ):
        assert fragment in msg


def test_config_head_divisibility_only_checked_for_blocks_that_exist() -> None:
    cfg = ModelConfig(hidden_size=30, use_temporal_attention=False, use_graph=False)
    assert cfg.hidden_size == 30
    cfg = ModelConfig(lookback=4, fan_top_k=5, use_fan=False)
    assert cfg.fan_top_k == 5


def test_config_turns_toml_lists_into_tuples() -> None:
    cfg = ModelConfig(horizons=[1, 2], quantiles=[0.25, 0.75])  # type: ignore[arg-type]
    assert cfg.horizons == (1, 2) and cfg.quantiles == (0.25, 0.75)
    hash(cfg)  # frozen config stays hashable


def test_bad_n_features_is_a_user_error() -> None:
    with pytest.raises(UserError, match="n_features=0"):
        ATFTGATFAN(ModelConfig(), n_features=0)


def test_wrong_window_length_is_rejected() -> None:
    model = make_model(tiny())
    with pytest.raises(ValueError, match="lookback=8"):
        model(torch.randn(4, 7, N_FEATURES))


# ---------------------------------------------------------------- shapes and gradients

CONFIGS = {
    "all_on": tiny(),
    "all_off": tiny(use_vsn=False, use_temporal_attention=False, use_graph=False, use_fan=False),
    "no_vsn": tiny(use_vsn=False),
    "deep": tiny(lstm_layers=2, gat_layers=2, fan_top_k=1),
    "one_head_one_quantile": tiny(horizons=(1,), quantiles=(0.5,)),
    "checkpointed": tiny(grad_checkpointing=True),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_shapes_finite_and_gradient_reaches_every_parameter(name: str) -> None:
    cfg = CONFIGS[name]
    model = make_model(cfg).train()
    n, e = 12, 40
    x = inputs(n, cfg)
    edge_index, edge_weight = random_graph(n, e)
    out = model(x, edge_index, edge_weight)
    n_h, n_q = len(cfg.horizons), len(cfg.quantiles)
    assert out["point"].shape == (n, n_h)
    assert out["quantiles"].shape == (n, n_h, n_q)
    assert out["embedding"].shape == (n, cfg.hidden_size)
    assert ("vsn_weights" in out) == cfg.use_vsn
    assert ("temporal_attn" in out) == cfg.use_temporal_attention
    assert ("graph_attn" in out) == cfg.use_graph
    if cfg.use_temporal_attention:
        assert out["temporal_attn"].shape == (n, cfg.attn_heads, cfg.lookback)
    if cfg.use_graph:
        assert out["graph_attn"].shape == (e, cfg.gat_heads)
    for value in out.values():
        assert torch.isfinite(value).all()
    g = torch.Generator().manual_seed(1)
    loss = (out["point"] * torch.randn(n, n_h, generator=g)).sum()
    loss = loss + (out["quantiles"] * torch.randn(n, n_h, n_q, generator=g)).sum()
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


def test_grad_checkpointing_gives_the_same_outputs_and_gradients() -> None:
    x = inputs(10, tiny())
    edge_index, edge_weight = random_graph(10, 30)
    results = []
    for flag in (False, True):
        model = make_model(tiny(grad_checkpointing=flag)).train()
        out = model(x, edge_index, edge_weight)
        (out["point"].sum() + out["quantiles"].pow(2).sum()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out["point"].detach(), grads))
    (p0, g0), (p1, g1) = results
    torch.testing.assert_close(p0, p1)
    assert g0.keys() == g1.keys()
    for name in g0:
        torch.testing.assert_close(g0[name], g1[name], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- switches are real


@pytest.mark.parametrize(
    ("switch", "prefixes"),
    [
        ("use_vsn", ("vsn.",)),
        ("use_temporal_attention", ("temporal.attn.", "temporal.attn_gate.")),
        ("use_graph", ("graph.",)),
        ("use_fan", ("fan.", "fan_gate.")),
    ],
)
def test_switching_a_block_off_removes_its_parameters(
    switch: str, prefixes: tuple[str, ...]
) -> None:
    on = param_names(make_model(tiny(**{switch: True})))
    off = param_names(make_model(tiny(**{switch: False})))
    for prefix in prefixes:
        assert any(n.startswith(prefix) for n in on), prefix
        assert not any(n.startswith(prefix) for n in off), prefix
    removed = on - off
    assert removed and all(n.startswith(prefixes) for n in removed)
    if switch == "use_vsn":  # the replacement is a plain linear projection
        assert off - on == {"input_proj.weight", "input_proj.bias"}
    else:
        assert off <= on


def test_without_graph_a_node_ignores_every_other_node() -> None:
    cfg = tiny(use_graph=False)
    model = make_model(cfg).eval()
    x = inputs(6, cfg)
    edge_index = torch.tensor([[1, 2, 3, 4, 5], [0, 0, 0, 0, 0]])  # ignored without the graph
    base = model(x, edge_index, torch.ones(5))["point"]
    x2 = x.clone()
    x2[3] += 5.0
    moved = model(x2, edge_index, torch.ones(5))["point"]
    others = [0, 1, 2, 4, 5]
    torch.testing.assert_close(moved[others], base[others], rtol=0, atol=1e-6)
    assert (moved[3] - base[3]).abs().max() > 1e-3


def _perturb(model: ATFTGATFAN, x: torch.Tensor, ei: torch.Tensor, node: int) -> torch.Tensor:
    """Absolute change of every node's point prediction when ``node``'s input moves."""
    w = torch.full((ei.shape[1],), 0.5)
    base = model(x, ei, w)["point"]
    x2 = x.clone()
    x2[node] += 3.0
    return (model(x2, ei, w)["point"] - base).abs().amax(dim=1)  # (N,)


def test_graph_passes_information_only_along_edges() -> None:
    # Directed chain 2 -> 1 -> 0; node 3 has no edges at all.
    edge_index = torch.tensor([[2, 1], [1, 0]])
    cfg = tiny(gat_layers=1, graph_features=False)  # hops come from GAT layers only
    model = make_model(cfg).eval()
    x = inputs(4, cfg)
    d1 = _perturb(model, x, edge_index, node=1)
    assert d1[0] > 1e-4  # edge 1 -> 0
    assert d1[2] < 1e-6 and d1[3] < 1e-6  # nothing flows against the edge direction
    d2 = _perturb(model, x, edge_index, node=2)
    assert d2[1] > 1e-4
    assert d2[0] < 1e-6  # two hops away: one GAT layer cannot reach it
    assert d2[3] < 1e-6
    # A second layer carries it over the second hop.
    deep = make_model(tiny(gat_layers=2, graph_features=False)).eval()
    assert _perturb(deep, x, edge_index, node=2)[0] > 1e-4


def test_graph_features_add_exactly_one_hop() -> None:
    edge_index = torch.tensor([[3, 2, 1], [2, 1, 0]])  # chain 3 -> 2 -> 1 -> 0
    cfg = tiny(gat_layers=1, graph_features=True)
    model = make_model(cfg).eval()
    x = inputs(4, cfg)
    d = _perturb(model, x, edge_index, node=2)
    assert d[1] > 1e-4 and d[0] > 1e-4  # propagation + one GAT layer = two hops
    assert _perturb(model, x, edge_index, node=3)[0] < 1e-6  # three hops away


def test_neighbour_mean_matches_a_loop() -> None:
    from trainers.atft_gat.model import neighbour_mean

    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 4, 3, generator=g, dtype=torch.float64)
    edge_index = torch.tensor([[0, 1, 2, 3, 5], [1, 1, 0, 0, 0]])
    weight = torch.tensor([0.5, 0.25, 0.9, -0.3, 0.1], dtype=torch.float64)
    got = neighbour_mean(x, edge_index, weight)
    expected = torch.zeros_like(x)
    for i in range(6):
        ins = [(int(s), max(float(w), 0.0)) for s, d, w in zip(*edge_index, weight, strict=True)
               if d == i]
        total = sum(w for _, w in ins)
        for s_, w in ins:
            expected[i] += x[s_] * w / total
    torch.testing.assert_close(got, expected)
    assert got[2:].abs().sum() == 0  # nodes without in-edges get zeros


def test_node_without_in_edges_keeps_its_own_state() -> None:
    cfg = tiny(gat_layers=2)
    model = make_model(cfg).eval()
    x = inputs(5, cfg)
    edge_index = torch.tensor([[0, 1, 2], [1, 2, 0]])  # nodes 3 and 4 receive nothing
    with_graph = model(x, edge_index, torch.ones(3))
    without = model(x)  # no edge_index: the graph block is skipped
    torch.testing.assert_close(with_graph["point"][3:], without["point"][3:], rtol=0, atol=0)
    assert (with_graph["point"][:3] - without["point"][:3]).abs().max() > 1e-4


def test_edge_weight_changes_attention() -> None:
    cfg = tiny()
    model = make_model(cfg).eval()
    x = inputs(4, cfg)
    edge_index = torch.tensor([[1, 2, 3], [0, 0, 0]])
    a = model(x, edge_index, torch.tensor([0.9, -0.5, 0.0]))["graph_attn"]
    b = model(x, edge_index, torch.tensor([-0.9, 0.5, 0.0]))["graph_attn"]
    assert (a - b).abs().max() > 1e-4


# ---------------------------------------------------------------- edge softmax


def _loop_softmax(scores: torch.Tensor, dst: torch.Tensor, n: int) -> torch.Tensor:
    out = torch.zeros_like(scores)
    for i in range(n):
        idx = (dst == i).nonzero().flatten()
        if len(idx):
            out[idx] = torch.softmax(scores[idx], dim=0)
    return out


@pytest.mark.parametrize("scale", [1.0, 1000.0])
def test_edge_softmax_matches_a_per_node_loop(scale: float) -> None:
    g = torch.Generator().manual_seed(0)
    n, e, heads = 30, 200, 3
    dst = torch.randint(0, n - 5, (e,), generator=g)  # the last 5 nodes get no in-edges
    scores = torch.randn(e, heads, generator=g) * scale  # x1000: exp would overflow unshifted
    alpha = edge_softmax(scores, dst, n)
    assert torch.isfinite(alpha).all()
    torch.testing.assert_close(alpha, _loop_softmax(scores, dst, n), rtol=0, atol=1e-6)
    sums = torch.zeros(n, heads).index_add_(0, dst, alpha)
    torch.testing.assert_close(sums[: n - 5], torch.ones(n - 5, heads), rtol=0, atol=1e-6)
    assert (sums[n - 5 :] == 0).all()


def test_edge_softmax_float64_and_half_precision() -> None:
    g = torch.Generator().manual_seed(1)
    dst = torch.randint(0, 7, (50,), generator=g)
    scores = torch.randn(50, 2, generator=g, dtype=torch.float64)
    alpha = edge_softmax(scores, dst, 7)
    assert alpha.dtype == torch.float64
    torch.testing.assert_close(alpha, _loop_softmax(scores, dst, 7), rtol=0, atol=1e-12)
    half = edge_softmax(scores.to(torch.bfloat16), dst, 7)
    assert half.dtype == torch.float32  # upcast for the exp/sum


def test_model_graph_attention_sums_to_one_per_destination() -> None:
    cfg = tiny(gat_heads=4, hidden_size=8)
    model = make_model(cfg).eval()
    n = 9
    edge_index, edge_weight = random_graph(n, 40, seed=3)
    alpha = model(inputs(n, cfg), edge_index, edge_weight)["graph_attn"]
    sums = torch.zeros(n, 4).index_add_(0, edge_index[1], alpha)
    has_in = torch.zeros(n, dtype=torch.bool)
    has_in[edge_index[1]] = True
    torch.testing.assert_close(sums[has_in], torch.ones(int(has_in.sum()), 4))


# ---------------------------------------------------------------- FAN


def _wave(length: int, freq: int, *, amp: float, phase: float) -> torch.Tensor:
    t = torch.arange(length, dtype=torch.float64)
    return amp * torch.cos(2 * math.pi * freq * t / length + phase)


def test_fan_removes_a_pure_sum_of_k_sinusoids() -> None:
    length = 20
    x = torch.stack(
        [
            _wave(length, 1, amp=2.0, phase=0.3) + _wave(length, 3, amp=1.0, phase=1.0),
            _wave(length, 2, amp=0.5, phase=-0.7) + _wave(length, 9, amp=4.0, phase=0.1),
        ],
        dim=-1,
    ).unsqueeze(0)  # (1, L, 2): two features, each with 2 components
    residual, dominant = fan_decompose(x.float(), top_k=2)
    assert residual.abs().max() < 1e-5
    torch.testing.assert_close(dominant, x.float(), rtol=0, atol=1e-5)


def test_fan_leaves_the_signal_when_a_strong_sinusoid_dominates() -> None:
    length = 20
    signal = _wave(length, 4, amp=0.3, phase=0.2) + _wave(length, 7, amp=0.2, phase=-1.1)
    strong = _wave(length, 2, amp=5.0, phase=0.5)
    level = 10.0  # a non-stationary level is the zero-frequency component
    x = torch.stack([signal + strong, signal + level], dim=-1).unsqueeze(0).float()
    residual, dominant = fan_decompose(x, top_k=1)
    torch.testing.assert_close(residual[0, :, 0], signal.float(), rtol=0, atol=1e-5)
    torch.testing.assert_close(residual[0, :, 1], signal.float(), rtol=0, atol=1e-5)
    torch.testing.assert_close(dominant[0, :, 0], strong.float(), rtol=0, atol=1e-5)


def test_fan_residual_of_noise_plus_sinusoid_tracks_the_noise() -> None:
    g = torch.Generator().manual_seed(0)
    length = 64
    noise = torch.randn(length, generator=g, dtype=torch.float64) * 0.3
    x = (noise + _wave(length, 5, amp=3.0, phase=0.4)).view(1, length, 1).float()
    residual, _ = fan_decompose(x, top_k=1)
    r = residual.flatten().double()
    corr = torch.corrcoef(torch.stack([r, noise]))[0, 1]
    assert corr > 0.95
    assert r.std() < 0.5  # the amplitude-3 wave (std 2.1) is gone


def test_fan_toggle_changes_outputs_and_exactly_the_fan_parameters() -> None:
    cfg_on, cfg_off = tiny(), tiny(use_fan=False)
    on, off = make_model(cfg_on), make_model(cfg_off, seed=1)
    result = off.load_state_dict(on.state_dict(), strict=False)
    assert result.missing_keys == []
    assert result.unexpected_keys and all(
        k.startswith(("fan.", "fan_gate.")) for k in result.unexpected_keys
    )
    x = inputs(6, cfg_on) + torch.linspace(0, 3, cfg_on.lookback).view(1, -1, 1)  # a trend
    edge_index, edge_weight = random_graph(6, 12)
    on.eval(), off.eval()
    diff = on(x, edge_index, edge_weight)["point"] - off(x, edge_index, edge_weight)["point"]
    assert diff.abs().max() > 1e-3


# ---------------------------------------------------------------- VSN and heads


def test_vsn_weights_are_a_distribution_over_features() -> None:
    cfg = tiny()
    out = make_model(cfg).eval()(inputs(7, cfg) * 3)
    w = out["vsn_weights"]
    # with graph features, the neighbours' mean window doubles the selected inputs
    assert w.shape == (7, 2 * N_FEATURES)
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(dim=1), torch.ones(7))


def _perturbed_vsn(n_features: int, hidden: int, *, per_feature_grn: bool, seed: int = 0
                   ) -> VariableSelection:
    torch.manual_seed(seed)
    vsn = VariableSelection(n_features, hidden, dropout=0.0, per_feature_grn=per_feature_grn)
    with torch.no_grad():  # move LayerNorm gains/biases off their (1, 0) init
        for p in vsn.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return vsn.eval().double()


def test_folded_vsn_equals_the_plain_tft_computation() -> None:
    """The VSN folds its embedding into the first layers for speed; the function is unchanged."""
    torch.manual_seed(0)
    vsn = VariableSelection(4, 6, dropout=0.0, per_feature_grn=True).eval()
    with torch.no_grad():  # move LayerNorm gains/biases off their (1, 0) init
        for p in vsn.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(5, 7, 4, dtype=torch.float64)
    vsn = vsn.double()
    selected, weights = vsn(x)

    emb = x.unsqueeze(-1) * vsn.embed_weight + vsn.embed_bias  # (N, L, F, H)
    ref_weights = torch.softmax(vsn.selection_grn(emb.flatten(-2)), dim=-1)
    grn = vsn.feature_grn
    per_feature = []
    for f in range(4):  # one GRN per feature, written out plainly
        e = emb[:, :, f]
        h = F.elu(e @ grn.fc1.weight[f] + grn.fc1.bias[f])
        h = h @ grn.fc2.weight[f] + grn.fc2.bias[f]
        g = F.glu(h @ grn.gate.glu.weight[f] + grn.gate.glu.bias[f], dim=-1)
        norm = grn.gate.norm
        per_feature.append(F.layer_norm(e + g, (6,)) * norm.weight[f] + norm.bias[f])
    ref_selected = (ref_weights.unsqueeze(-1) * torch.stack(per_feature, dim=2)).sum(dim=2)
    torch.testing.assert_close(weights, ref_weights, rtol=0, atol=1e-12)
    torch.testing.assert_close(selected, ref_selected, rtol=0, atol=1e-12)


def test_shared_grn_vsn_equals_its_plain_computation() -> None:
    """Default mode: GRN(sum_f v_f emb_f), the sum taken as two matmuls, never (.., F, H)."""
    vsn = _perturbed_vsn(5, 6, per_feature_grn=False)
    x = torch.randn(4, 7, 5, dtype=torch.float64)
    selected, weights = vsn(x)
    emb = x.unsqueeze(-1) * vsn.embed_weight + vsn.embed_bias  # (N, L, F, H)
    ref_weights = torch.softmax(vsn.selection_grn(emb.flatten(-2)), dim=-1)
    assert vsn.mixture_grn is not None
    ref_selected = vsn.mixture_grn((ref_weights.unsqueeze(-1) * emb).sum(dim=2))
    torch.testing.assert_close(weights, ref_weights, rtol=0, atol=1e-12)
    torch.testing.assert_close(selected, ref_selected, rtol=0, atol=1e-12)


def test_vsn_modes_agree_where_they_should() -> None:
    """Same embedding and selection parameters -> the same selection weights at any F; with a
    single feature (weight 1) the shared GRN is that feature's GRN, so the outputs agree."""
    x = torch.randn(3, 6, 4, dtype=torch.float64)
    tft = _perturbed_vsn(4, 5, per_feature_grn=True, seed=1)
    shared = _perturbed_vsn(4, 5, per_feature_grn=False, seed=2)
    shared.load_state_dict({k: v for k, v in tft.state_dict().items()
                            if not k.startswith("feature_grn.")}, strict=False)
    torch.testing.assert_close(shared(x)[1], tft(x)[1], rtol=0, atol=1e-12)
    assert not torch.allclose(shared(x)[0], tft(x)[0])  # different functions at F > 1

    one_tft = _perturbed_vsn(1, 5, per_feature_grn=True, seed=3)
    one_shared = _perturbed_vsn(1, 5, per_feature_grn=False, seed=4)
    state = {k: v for k, v in one_tft.state_dict().items() if not k.startswith("feature_grn.")}
    for key, value in one_tft.state_dict().items():  # group 0's weights, as nn.Linear/LayerNorm
        if key.startswith("feature_grn."):
            is_linear_weight = value.dim() == 3
            state[key.replace("feature_grn.", "mixture_grn.")] = (
                value[0].t() if is_linear_weight else value[0])
    one_shared.load_state_dict(state)
    x1 = x[..., :1]
    torch.testing.assert_close(one_shared(x1)[0], one_tft(x1)[0], rtol=0, atol=1e-12)


def _saved_bytes(vsn: VariableSelection, x: torch.Tensor) -> int:
    """Bytes autograd keeps for the backward pass of one forward (distinct storages)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        vsn(x)[0].sum()
    return sum(seen.values())


def test_shared_grn_vsn_memory_does_not_grow_with_features_times_hidden() -> None:
    # What 10 more stocks add to the saved activations (parameters cancel out).
    n_features, hidden, length = 48, 64, 10
    x = torch.randn(20, length, n_features)
    block = n_features * 10 * length * hidden * 4  # bytes of one (F, 10*L, H) float32 block
    torch.manual_seed(0)
    for per_feature_grn in (True, False):
        vsn = VariableSelection(n_features, hidden, dropout=0.1,
                                per_feature_grn=per_feature_grn).train()
        growth = _saved_bytes(vsn, x) - _saved_bytes(vsn, x[:10])
        if per_feature_grn:  # TFT: several (F, N*L, H) activations per stock
            assert growth > 5 * block
        else:  # shared: about 10 (N*L, F) and a few (N*L, H) ones
            assert growth < 0.4 * block


def test_vsn_mode_switch_swaps_exactly_the_feature_transform() -> None:
    shared = param_names(make_model(tiny()))
    tft = param_names(make_model(tiny(vsn_per_feature_grn=True)))
    assert shared - tft and all(n.startswith("vsn.mixture_grn.") for n in shared - tft)
    assert tft - shared and all(n.startswith("vsn.feature_grn.") for n in tft - shared)
    x = inputs(6, tiny())
    a = make_model(tiny()).eval()(x)["point"]
    b = make_model(tiny(vsn_per_feature_grn=True)).eval()(x)["point"]
    assert not torch.allclose(a, b)


def test_quantiles_never_cross_even_with_wild_weights() -> None:
    cfg = tiny(quantiles=(0.05, 0.25, 0.5, 0.75, 0.95))
    model = make_model(cfg).eval()
    x = inputs(50, cfg) * 5
    q = model(x)["quantiles"]
    assert (q[..., 1:] > q[..., :-1]).all()  # strictly at ordinary scales
    with torch.no_grad():
        model.quantile_head.weight.normal_(0, 20)
        model.quantile_head.bias.normal_(0, 20)
    q = model(x)["quantiles"]
    # softplus(-100) underflows to 0 in float32, so only "never crossing" holds at this scale.
    assert (q[..., 1:] >= q[..., :-1]).all()
    assert (q[..., 1:] > q[..., :-1]).float().mean() > 0.5


def test_pinball_loss_matches_numpy_with_nans_and_mask() -> None:
    rng = np.random.default_rng(0)
    quantiles = (0.1, 0.5, 0.9)
    pred = rng.normal(size=(6, 2, 3))
    target = rng.normal(size=(6, 2))
    target[1, 0] = np.nan
    target[4, 1] = np.nan
    mask = np.ones((6, 2), dtype=bool)
    mask[2] = False

    def reference(valid: np.ndarray) -> float:
        total, count = 0.0, 0
        for i, j in zip(*np.nonzero(valid), strict=True):
            for k, q in enumerate(quantiles):
                d = target[i, j] - pred[i, j, k]
                total += max(q * d, (q - 1) * d)
                count += 1
        return total / count

    finite = np.isfinite(target)
    got = pinball_loss(torch.tensor(pred), torch.tensor(target), quantiles)
    assert got.item() == pytest.approx(reference(finite), rel=1e-12)
    got = pinball_loss(
        torch.tensor(pred), torch.tensor(target), quantiles, mask=torch.tensor(mask)
    )
    assert got.item() == pytest.approx(reference(finite & mask), rel=1e-12)


def test_pinball_loss_with_no_valid_target_is_zero_and_differentiable() -> None:
    pred = torch.randn(3, 2, 3, requires_grad=True)
    loss = pinball_loss(pred, torch.full((3, 2), float("nan")), (0.1, 0.5, 0.9))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(pred.grad, torch.zeros(3, 2, 3))


# ---------------------------------------------------------------- learning


def _neighbour_task(
    g: torch.Generator, *, n: int, in_degree: int = 4, lookback: int = 8
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Node i's target is the mean of its in-neighbours' last value of feature 0, not its own."""
    x = torch.randn(n, lookback, 2, generator=g)
    dst = torch.arange(n).repeat_interleave(in_degree)
    src = (dst + torch.randint(1, n, (n * in_degree,), generator=g)) % n  # no self-loops
    y = torch.zeros(n).index_add_(0, dst, x[src, -1, 0]) / in_degree
    return x, torch.stack([src, dst]), torch.ones(n * in_degree), y


def _fit_and_score(use_graph: bool) -> float:
    cfg = ModelConfig(
        hidden_size=16,
        lookback=8,
        attn_heads=2,
        gat_heads=2,
        gat_layers=1,
        fan_top_k=1,
        dropout=0.0,
        gat_dropout=0.0,
        horizons=(1,),
        quantiles=(0.5,),
        use_graph=use_graph,
    )
    torch.manual_seed(0)
    model = ATFTGATFAN(cfg, n_features=2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(300):  # a fresh random graph and market every step
        x, ei, ew, y = _neighbour_task(g, n=64)
        loss = (model(x, ei, ew)["point"][:, 0] - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():  # held-out graph: memorising training nodes cannot help
        x, ei, ew, y = _neighbour_task(torch.Generator().manual_seed(99), n=256)
        pred = model(x, ei, ew)["point"][:, 0]
    return float(torch.corrcoef(torch.stack([pred, y]))[0, 1])


def test_graph_model_learns_a_neighbour_signal_that_a_graphless_model_cannot() -> None:
    assert _fit_and_score(use_graph=True) > 0.8
    assert abs(_fit_and_score(use_graph=False)) < 0.3


def test_edge_dropout_drops_edges_only_in_training() -> None:
    cfg = tiny(gat_layers=1, edge_dropout=0.5, dropout=0.0, gat_dropout=0.0)
    model = make_model(cfg)
    x = inputs(8, cfg)
    edge_index, edge_weight = random_graph(8, 24)
    model.train()
    torch.manual_seed(1)
    a = model(x, edge_index, edge_weight)["point"]
    torch.manual_seed(2)
    b = model(x, edge_index, edge_weight)["point"]
    assert (a - b).abs().max() > 1e-6  # different edges survived
    model.eval()
    torch.testing.assert_close(model(x, edge_index, edge_weight)["point"],
                               model(x, edge_index, edge_weight)["point"], rtol=0, atol=0)
    full = make_model(tiny(gat_layers=1, dropout=0.0, gat_dropout=0.0)).eval()
    torch.testing.assert_close(model(x, edge_index, edge_weight)["point"],
                               full(x, edge_index, edge_weight)["point"], rtol=0, atol=0)


def test_the_linear_skip_starts_at_zero_then_shifts_every_head_by_the_last_dates_features(
) -> None:
    cfg = tiny(linear_skip=True)
    x = inputs(12, cfg)
    edges, weights = random_graph(12, 30)
    plain, skip = make_model(tiny()), make_model(cfg)
    plain.eval(), skip.eval()
    with torch.no_grad():
        a, b = plain(x, edges, weights), skip(x, edges, weights)
    # zero at initialisation, and the rest of the network drew the same parameters
    torch.testing.assert_close(a["point"], b["point"], rtol=0, atol=0)
    torch.testing.assert_close(a["quantiles"], b["quantiles"], rtol=0, atol=0)
    with torch.no_grad():
        skip.linear.weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, 0.0]]))
        skip.linear.bias.copy_(torch.tensor([0.1, -0.1]))
        c = skip(x, edges, weights)
    shift = x[:, -1, :] @ skip.linear.weight.T + skip.linear.bias  # the last date, own features
    torch.testing.assert_close(c["point"], a["point"] + shift)
    torch.testing.assert_close(c["quantiles"], a["quantiles"] + shift.unsqueeze(-1))
    # trained with the network's loss: a ranking of the last date's first feature is learnt
    skip.train()
    out = skip(x, edges, weights)
    loss = -(out["point"][:, 0] * x[:, -1, 0]).mean()
    loss.backward()
    assert skip.linear.weight.grad[0, 0] < 0  # the step raises the first feature's weight
    assert "linear.weight" not in param_names(make_model(tiny()))
