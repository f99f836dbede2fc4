"""Training objective of DeepSeek-V4 (docs/training.md): next-token CE + MTP CE (depth 1) + sequence-wise balance loss.

    loss = lm + mtp_weight · mtp + balance_alpha · Σ_layers balance

The balance loss is V3's sequence-wise form, per sequence b and routed layer:
    f_i = E / (K·S) · #{t : i ∈ topk(t)}        (no gradient: top-k is discrete)
    P_i = 1/S · Σ_t s_{t,i} / Σ_j s_{t,j}       (normalised affinities, differentiable)
    L_b = Σ_i f_i · P_i                          averaged over the batch.
Hash-routed layers take no balance loss (their routing is a fixed table).
"""
import mindspore as ms
from mindspore import nn, ops


def masked_ce(logits, targets, mask, denom=None):
    """Cross entropy summed over positions with mask 1, divided by `denom` (default: the mask count).

    Data parallelism passes denom = (tokens of the global batch) / dp, so that the mean of the ranks' losses is
    exactly the single-process loss of the whole batch even when ranks hold different numbers of real tokens.
    """
    V = logits.shape[-1]
    lf = ops.cast(logits, ms.float32).reshape(-1, V)
    lse = ops.logsumexp(lf, 1, False)
    tgt = ops.gather_elements(lf, 1, targets.reshape(-1, 1)).reshape(-1)
    m = ops.cast(mask, ms.float32).reshape(-1)
    if denom is None:
        denom = ops.sum(m)
    return ops.sum((lse - tgt) * m) / ops.maximum(denom, 1.0)


def mtp_mask(loss_mask, segment_ids):
    """MTP position t predicts targets[t+1] (token t+2) from h_t and token t+1: both must be in one document."""
    same = ops.cast(segment_ids[:, :-1] == segment_ids[:, 1:], loss_mask.dtype)
    return loss_mask[:, 1:] * same


def seq_balance(aff, ids, n_experts, topk, batch, mask):
    """V3 sequence-wise balance loss of one layer. aff [B*S, E], ids [B*S, k], mask [B, S] (1 = real token)."""
    S = aff.shape[0] // batch
    m = ops.cast(mask, ms.float32).reshape(batch, S, 1)
    n_tok = ops.maximum(ops.sum(m, 1), 1.0)                                     # [B, 1]
    p = aff / ops.sum(aff, -1, True)
    P = ops.sum(p.reshape(batch, S, n_experts) * m, 1) / n_tok                  # [B, E]
    onehot = ops.one_hot(ids.reshape(-1), n_experts, ops.ones((), ms.float32), ops.zeros((), ms.float32))
    counts = ops.sum(onehot.reshape(batch, S, topk, n_experts) * ops.expand_dims(m, 2), (1, 2))
    f = ops.stop_gradient(counts * (n_experts / topk) / n_tok)
    return ops.mean(ops.sum(f * P, -1))


def expert_load(ids, n_experts, mask):
    """Tokens routed to each expert [E] (masked positions excluded): the aux-loss-free balancer's signal."""
    onehot = ops.one_hot(ids.reshape(-1), n_experts, ops.ones((), ms.float32), ops.zeros((), ms.float32))
    k = ids.shape[-1]
    m = ops.cast(mask, ms.float32).reshape(-1, 1, 1)
    return ops.stop_gradient(ops.sum(onehot.reshape(-1, k, n_experts) * m, (0, 1)))


class V4Loss(nn.Cell):
    """Wraps a Transformer: construct(input_ids, targets, segment_ids, loss_mask, mtp_weight[, lm_denom, mtp_denom])
    -> (loss, lm_loss, mtp_loss, balance_loss, loads [n_routed_layers, E], dropped): `dropped` counts the
    token->expert assignments that overflowed a fixed expert capacity, over all MoE layers (0 when dropless).
    auto_prefix=False keeps the official parameter names (no `model.` prefix) in gradients, optimiser state and
    checkpoints. train/pipeline.py's StageLoss reuses routed_terms / mtp_terms per pipeline stage."""

    def __init__(self, model, balance_alpha: float = 1e-4):
        super().__init__(auto_prefix=False)
        self.model = model
        cfg = model.cfg
        self.E, self.K = cfg.n_routed_experts, cfg.n_activated_experts
        self.alpha = balance_alpha
        # positions (in model.run_layers' routes) of the routed, non-hash layers this process holds
        self.routed = tuple(k for k, i in enumerate(model.local_layers) if not cfg.is_hash_layer(i))
        self.with_mtp = model.with_mtp

    def construct(self, input_ids, targets, segment_ids, loss_mask, mtp_weight, lm_denom=None, mtp_denom=None):
        B = input_ids.shape[0]
        _, h, _, routes = self.model.streams(input_ids, segment_ids)
        lm = masked_ce(self.model.logits(h), targets, loss_mask, lm_denom)
        balance, loads, dropped = self.routed_terms(routes, B, loss_mask)
        mtp = ops.zeros((), ms.float32)
        if self.with_mtp:
            mtp, mbal, mload, mdrop = self.mtp_terms(h, input_ids, targets, segment_ids, loss_mask, mtp_denom, B)
            balance = balance + mbal
            loads = loads + (mload,)
            dropped = dropped + mdrop
        loss = lm + mtp_weight * mtp + self.alpha * balance
        return loss, lm, mtp, balance, ops.stack(loads), dropped

    def routed_terms(self, routes, B, loss_mask):
        """(balance summed over the routed layers, their expert loads (tuple), dropped assignments of all layers)."""
        balance = ops.zeros((), ms.float32)
        loads = ()
        dropped = ops.zeros((), ms.int32)
        for r in routes:
            dropped = dropped + r[2]
        for i in self.routed:
            aff, ids, _ = routes[i]
            balance = balance + seq_balance(aff, ids, self.E, self.K, B, loss_mask)
            loads = loads + (expert_load(ids, self.E, loss_mask),)
        return balance, loads, dropped

    def mtp_terms(self, h, input_ids, targets, segment_ids, loss_mask, mtp_denom, B):
        """Depth-1 MTP: (CE, balance, expert load, dropped) of the MTP block on the main streams h."""
        mlogits, aff, ids, mdrop = self.model.mtp_forward(h, input_ids, segment_ids)
        mmask = mtp_mask(loss_mask, segment_ids)
        mtp = masked_ce(mlogits, targets[:, 1:], mmask, mtp_denom)
        return mtp, seq_balance(aff, ids, self.E, self.K, B, mmask), expert_load(ids, self.E, mmask), mdrop
