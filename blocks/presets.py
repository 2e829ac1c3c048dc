"""Published models as points of the token-mixer grammar, written once: the grammar expands ``preset:`` from this
table (keys given next to it override these), the tests build their configs from it.

Each entry is a mapping of token-mixer keys (the fields of blocks/config.py's MemoryConfig / AttentionConfig /
ConvConfig, plus ``type``); a preset names values of the axes in blocks/axis.py.

Fidelity. Each memory preset's activations, norms and gates follow its reference implementation, in its order;
the comment above each entry names what was checked against which source. Two kinds of difference remain on
purpose, and are listed per preset:
  - widths: every memory preset derives K = V = d_model / heads (so designs compare at equal state unless a study
    says otherwise), where the references widen or narrow them; set key_dim / value_dim to match a reference.
  - what the grammar does not express (a position rotation inside a memory, shared B/C across heads, Mamba2's D
    skip).
Sources: FLA = fla-org/flash-linear-attention @ bc3b101 (fla/layers/*.py), MAMBA = state-spaces/mamba @ e9594ce
(mamba_ssm/modules/mamba2.py), GDN = NVlabs/GatedDeltaNet @ 5ddd1e4 (lit_gpt/gated_delta_net.py), TS =
microsoft/torchscale @ 4d1e0e8 (RetNet), ZOO = HazyResearch/zoology @ 8700f46, BASED = HazyResearch/based @ 32c1bd4.
"""
from __future__ import annotations

from typing import Any

__all__ = ["PRESETS", "memory_preset"]


def _memory(bias: str, retention: str, feature_map: str, key_norm: str, short_conv: int, output_gate: bool,
            **more) -> dict:
    return dict(type="memory", bias=bias, retention=retention, feature_map=feature_map, key_norm=key_norm,
                short_conv=short_conv, output_gate=output_gate, **more)


PRESETS: dict[str, dict[str, Any]] = {
    # Linear attention, Katharopoulos et al. 2020, https://arxiv.org/abs/2006.16236, Sec. 3.2:
    # o_t = phi(q_t)^T S_t / (phi(q_t)^T z_t), S_t = S_{t-1} + phi(k_t) v_t^T, z_t = z_{t-1} + phi(k_t),
    # phi = elu + 1, no output norm and no gate (the paper). FLA's LinearAttention instead drops the denominator
    # and normalises the output per head (layers/linear_attn.py L113-115, L154-189): {normalizer: none,
    # norm: rmsnorm} reaches that variant.
    "linear_attention": _memory("dot", "none", "elu1", "none", 0, False, normalizer="sum", norm="none"),
    # RetNet, Sun et al. 2023, https://arxiv.org/abs/2307.08621 : fixed decay 1 - 2^(-5-h) per head (TS
    # retnet.py L27), k scaled by K^-0.5 (msr L182), per-head RMSNorm then swish(W_G x) gate, then W_O (TS
    # multiscale_retention.py L66, L196-200): as here. TS's row normalisations of the decay matrix are per-(t,
    # head) positive factors the per-head norm cancels. Not expressed: the xPos rotation of q and k (TS L25-29;
    # FLA uses RoPE), the norm without gains (TS elementwise_affine=False), V = 2 d_model / heads (TS
    # value_embed_dim, FLA expand_v 2).
    "retnet": _memory("dot", "constant", "identity", "none", 0, True),
    # Mamba2 / SSD, Dao & Gu 2024, https://arxiv.org/abs/2405.21060 (MAMBA mamba2.py): x, B, C (v, k, q here)
    # through a kernel-4 depthwise conv WITH bias and SiLU (L104-113); dt = softplus(W_dt x + dt_bias), decay
    # exp(-A dt), A ~ U(1, 16), dt ~ logU(1e-3, 1e-1) floor 1e-4 (L119-136, L182); the input scaled by dt,
    # S = a S + dt B x^T (ssd_minimal.py L103); the read S^T C unscaled (scale 1); y * silu(z) BEFORE an
    # RMSNorm over all heads at once (ngroups 1, norm_before_gate=False, L142-145, L269-270). Not expressed:
    # the D skip y += D x, B and C shared by all heads (ngroups 1, K = d_state), expand 2 with headdim 64
    # (V = 64, heads = 2 d_model / 64).
    "mamba2": _memory("dot", "scalar", "identity", "none", 4, True, conv_bias=True, write_scale="dt", scale=1.0,
                      gate_position="before_norm", norm_group="all"),
    # GLA, Yang et al. 2023, https://arxiv.org/abs/2312.06635 (FLA layers/gla.py): no conv, no feature map;
    # log a = logsigmoid(W2 W1 x + b) / 16 with rank 16, b = 0 at init (L154-155, L237; the model's
    # _init_weights zeroes it); K^-0.5; RMSNorm per head then * silu(W_g x) (FusedRMSNormGated L158-163,
    # L287-292): as here. Width: FLA's expand_k 0.5 (K = d_model / (2 heads)).
    "gla": _memory("dot", "vector", "identity", "none", 0, True),
    # DeltaNet, Yang et al. 2024, https://arxiv.org/abs/2406.06484 (FLA layers/delta_net.py): q, k, v through a
    # kernel-4 conv without bias whose SiLU IS the q/k activation (qk_activation 'silu' -> conv activation,
    # no second map, L139-156, L224-232), then l2-normalised q and k (L256, L266), beta = sigmoid(W_b x),
    # K^-0.5, per-head RMSNorm, no gate (use_gate False). So feature_map identity: the conv's SiLU is the one
    # SiLU (an earlier preset applied SiLU twice, conv then feature_map).
    "deltanet": _memory("l2", "none", "identity", "l2", 4, False),
    # Gated DeltaNet, Yang et al. 2024, https://arxiv.org/abs/2412.06464 (FLA layers/gated_deltanet.py L145-363,
    # GDN L83-213): q, k, v through the kernel-4 conv + SiLU, once (FLA L172-189, GDN L89-91); l2 norm of q and
    # k; g = -exp(A_log) softplus(W_a x + dt_bias) with A ~ U(0, 16) (FLA L151, GDN L107), dt ~ logU(1e-3, 1e-1)
    # floor 1e-4 (FLA L155-165); beta = sigmoid(W_b x); RMSNorm per head then * silu(W_g x) (FLA L195-197,
    # L355-357). Width: V = 2 K in both references (FLA expand_v 2, GDN expand_v 1.5 / expand_k 0.75).
    "gated_deltanet": _memory("l2", "scalar", "identity", "l2", 4, True, A_init_min=0.0),
    # Based's linear attention, Arora et al. 2024, https://arxiv.org/abs/2402.18668 (ZOO mixers/based.py
    # L97-100, L181-216; BASED models/mixers/linear_attention.py L52-75, L169-197): q, k = W x in R^{d'} per head
    # with no conv, activation or norm before the second-order Taylor map phi (feature_dim d' = key_dim = 16,
    # its temperature inside phi), v full width, the denominator phi(q)^T sum phi(k) (eps 1e-12), no norm, no
    # gate, no decay; 1 head in Zoology's MQAR configs. Based as a model is this layer with short convolutions
    # and sliding-window attention around it: Zoology's MQAR stack is [base_conv, based] (pattern "CM"),
    # Based's LM stack repeats C M S C C with S a sliding window (examples/based.yaml).
    "based": _memory("dot", "none", "taylor2", "none", 0, False, normalizer="sum", norm="none", heads=1, key_dim=16),
    # Zoology's BaseConv (Arora et al. 2023, https://arxiv.org/abs/2312.04927; ZOO mixers/base_conv.py):
    # conv_3(u) * (W u + b) + u, depthwise conv with bias, no activation (blocks/conv.py).
    "base_conv": dict(type="conv", short_conv=3, conv_bias=True),
    # Kimi Delta Attention (Kimi Linear, Moonshot AI 2025, https://arxiv.org/abs/2510.26692): the delta rule with
    # a per-key-channel decay (Mamba2's gate per channel); sigmoid output gate (fla: low rank, here full rank)
    "kda": {**_memory("l2", "kda", "identity", "l2", 4, True), "output_gate_act": "sigmoid"},
    # DeltaProduct, Siems et al. 2025, https://arxiv.org/abs/2502.10297: 2 Householder steps per token with step
    # sizes in (0, 2) (the paper's [-1, 1] eigenvalues, fla's default), no decay; gated: Gated DeltaNet's scalar gate
    "deltaproduct": {**_memory("l2", "none", "identity", "l2", 4, False), "update": "householder", "n_householder": 2,
                     "beta_range": [0.0, 2.0]},
    "gated_deltaproduct": {**_memory("l2", "scalar", "identity", "l2", 4, True, A_init_min=0.0), "update": "householder",
                           "n_householder": 2, "beta_range": [0.0, 2.0]},
    # RWKV-7 "Goose", Peng et al. 2025, https://arxiv.org/abs/2503.14456: the diagonal-plus-low-rank transition with
    # its decay LoRA (rank gate_rank), token shift, bonus, value residual (Sec. 4; RWKV-LM x070's v0/v1/v2, fla's
    # v_lora on every layer but the first) and per-head GroupNorm; output gate silu (RWKV-7: a LoRA)
    "rwkv7": {**_memory("rwkv7", "rwkv7", "identity", "none", 0, True), "norm": "groupnorm", "gate_rank": 32,
              "value_residual": True},
    # HGRN2, Qin et al. 2024, https://arxiv.org/abs/2404.07904: GLA with the key tied to the forget gate (k = 1 - f),
    # silu queries (fla's HGRN2); the forget gate's lower bounds learned and shared across layers, rising with depth
    # (the paper's Sec. 3 from HGRN; fla's use_lower_bound=True default: lower_bounds = softmax(G, 0).cumsum(0) -
    # softmax(G, 0)[0], G zeros [n_layers, hidden], layer 0 unbounded; fla/models/hgrn2/modeling_hgrn2.py)
    "hgrn2": _memory("dot", "hgrn2", "silu", "none", 0, False, learned_lower_bounds=True),
    # mLSTM, Beck et al. 2024, https://arxiv.org/abs/2405.04517 (gates as in xLSTM 7B, arXiv 2503.13427): exponential
    # input gate, sigmoid forget gate per head, normaliser and max-stabiliser; sigmoid output gate
    "mlstm": {**_memory("mlstm", "forget", "identity", "none", 0, True), "output_gate_act": "sigmoid"},
    # ---- The Miras design space (issue 12): deep and non-linear test-time-trained memories on the mini-batch
    # engine (kernels/minibatch.py; chunk_size is their mini-batch size). Keys each paper leaves open are
    # archspace's documented defaults (README, "Miras presets"); every key can be overridden.
    # Titans' neural long-term memory alone (Behrouz et al. 2024, https://arxiv.org/abs/2501.00663): a 2-layer MLP
    # memory, l2 loss (Eq. 12), momentum S_t = eta_t S_{t-1} - theta_t grad (Eq. 14) and data-dependent weight decay
    # M_t = (1 - alpha_t) M_{t-1} + S_t (Eq. 13), q/k/v through a conv, SiLU and l2-normalised q, k (Sec. 4.4).
    # The short conv applies the SiLU (blocks/short_conv.py), so the feature map is the identity: SiLU once
    "titans_lmm": dict(type="memory", structure="mlp", bias="l2", retention="weight_decay", update="momentum",
                       key_norm="l2", short_conv=4, output_gate=True, chunk_size=16),
    # TTT-Linear / TTT-MLP (Sun et al. 2024, https://arxiv.org/abs/2407.04620, Sec. 2.7 and the released code):
    # f(x) = x + LN(f_res(x)), W_i = W_0 - c_i sum_j lr_j grad (mini-batch 16, learned token scale), lr =
    # base_lr sigmoid(w x) / head_dim (head_dim 64 in every TTT configuration: base_lr 1 -> 1/64, 0.1 -> 0.1/64)
    "ttt_linear": dict(type="memory", structure="mlp", depth=1, inner_bias=True, bias="l2", retention="none",
                       update="gd", token_scale=True, lr_max=1 / 64, short_conv=4, output_gate=True, chunk_size=16),
    "ttt_mlp": dict(type="memory", structure="mlp", depth=2, expansion=4.0, activation="gelu_tanh", inner_bias=True,
                    bias="l2", retention="none", update="gd", token_scale=True, lr_max=0.1 / 64, short_conv=4,
                    output_gate=True, chunk_size=16),
    # Miras (Behrouz et al. 2025, https://arxiv.org/abs/2504.13173, Sec. 5.3): 2-layer MLP memories; Moneta:
    # l_p bias (p = 3, Eq. 11) with l_q retention (q = 4, Eq. 24); Yaad: Huber bias with a data-dependent threshold
    # (Eq. 16) and l2 local + global retention (Eq. 26); Memora: l2 bias with KL retention (Eq. 27)
    "moneta": dict(type="memory", structure="mlp", bias="lp", p=3.0, retention="lq", q=4.0, update="gd",
                   key_norm="l2", short_conv=4, output_gate=True, chunk_size=16),
    "yaad": dict(type="memory", structure="mlp", bias="huber", huber_form="yaad", huber_threshold="data",
                 retention="weight_decay", update="gd", key_norm="l2", short_conv=4, output_gate=True, chunk_size=16),
    "memora": dict(type="memory", structure="mlp", bias="l2", retention="kl", update="gd", key_norm="l2",
                   short_conv=4, output_gate=True, chunk_size=16),
    # ATLAS (Behrouz et al. 2025, https://arxiv.org/abs/2505.23735): the Omega rule (Eq. 9: the l2 loss over a
    # sliding window with data-dependent weights) optimised by Muon-style orthogonalised momentum (Sec. 4), weight
    # decay, over polynomial features of q and k (Sec. 3.1, degree 2: keys 1 + d + d^2 wide, so the deep memory
    # has no residual, its input width is not value_dim); q/k/v through the conv and its SiLU (once, as titans_lmm)
    "atlas": dict(type="memory", structure="mlp", residual=False, bias="omega", omega_window=4,
                  retention="weight_decay", update="newton_schulz", feature_map="poly", poly_degree=2, key_norm="l2",
                  short_conv=4, output_gate=True, chunk_size=16),
    # Longhorn (Liu et al. 2024, https://arxiv.org/abs/2407.14207): the closed-form implicit step of online l2
    # regression per value channel, Delta = eps / (1 + eps ||k||^2); a state of 16 per channel (N = 16), one head,
    # keys and queries through the conv (+ SiLU), no key norm (the implicit step is stable), SiLU output gate
    "longhorn": dict(type="memory", structure="matrix", bias="l2", retention="none", update="implicit", heads=1,
                     key_dim=16, feature_map="identity", key_norm="none", short_conv=4, norm="none",
                     output_gate=True),
    # Causal softmax attention (global) and sliding-window attention
    "attention": dict(type="attention", window=None),
    "swa": dict(type="attention", window=128),
}


def memory_preset(name: str, d_model: int, heads: int, key_dim: int, value_dim: int, **overrides):
    """The MemoryConfig of memory preset ``name`` at these dims (``overrides``: any other MemoryConfig field)."""
    from .config import MemoryConfig

    if PRESETS[name].get("type") != "memory":
        raise ValueError(f"preset {name!r} is not a memory mixer")
    keys = {k: v for k, v in PRESETS[name].items() if k not in ("type", "heads", "key_dim", "value_dim")}
    return MemoryConfig(d_model, heads, key_dim, value_dim, **{**keys, **overrides})
