"""What a compressed layer is built from: importance, phantom summaries, and the summaries' error.

All three read the last ``obs_window`` queries of the prefill (post-RoPE, captured by the attention
function) against the layer's post-RoPE keys, in float32 at least (float64 stays float64):

* importance — SnapKV-style attention mass each page receives from the observation queries;
* phantoms — per page and KV head, ``k`` cluster means of the keys (k-means on keys, initialised with
  contiguous chunks, so the result is deterministic) and the means of the matching values, with the
  member count ``n`` of each cluster: a phantom's logit gets ``+log n`` so it weighs as its ``n`` tokens;
* phantom error — how far the observation queries' attention output moves when one page (alone) is
  replaced by its phantoms: the pages summarised worst become surprise pages;
* exceptions — per KV head, the tokens of summarised pages that their phantoms represent worst stay
  exact (:func:`exception_scores`, :func:`top_exceptions`) and leave their clusters
  (:func:`without_exceptions`), so a phantom weighs only the tokens it still stands for.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def _wide(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


@dataclass
class Observation:
    """Per KV head: observation-query logits (causal, float32) and the exp-normalisers they imply."""

    logits: torch.Tensor  # [Hk, R, N], R = n_rep * W query rows per KV head; masked entries are -inf
    row_max: torch.Tensor  # [Hk, R, 1]
    weights: torch.Tensor  # [Hk, R, N] exp(logits - row_max)
    queries: torch.Tensor  # [Hk, R, D] float32
    scaling: float


def observe(query: torch.Tensor, keys: torch.Tensor, scaling: float) -> Observation:
    """Logits of the observation queries over all keys.

    ``query`` is [1, Hq, W, D] (the last W prompt positions), ``keys`` [1, Hk, N, D]; query head h uses
    KV head h // n_rep, as ``repeat_kv`` lays them out.  Query w sits at position N - W + w and sees keys
    up to it.
    """
    _, hq, w, d = query.shape
    _, hk, n, _ = keys.shape
    n_rep = hq // hk
    q = _wide(query[0]).reshape(hk, n_rep * w, d)
    k = _wide(keys[0])
    logits = torch.einsum("hrd,hnd->hrn", q, k) * scaling
    pos = torch.arange(n - w, n, device=keys.device).repeat(n_rep)  # row r -> position of query r % W
    future = torch.arange(n, device=keys.device)[None, :] > pos[:, None]
    logits = logits.masked_fill(future[None], float("-inf"))
    row_max = logits.amax(dim=-1, keepdim=True)
    weights = torch.exp(logits - row_max)
    return Observation(logits=logits, row_max=row_max, weights=weights, queries=q, scaling=scaling)


def page_importance(obs: Observation, page_size: int) -> torch.Tensor:
    """Mean attention share of each page over all observation rows: [P] float32, sums to 1."""
    probs = obs.weights / obs.weights.sum(dim=-1, keepdim=True)
    per_token = probs.sum(dim=(0, 1))
    n = per_token.shape[0]
    n_pages = -(-n // page_size)
    padded = torch.nn.functional.pad(per_token, (0, n_pages * page_size - n))
    return padded.view(n_pages, page_size).sum(-1) / (probs.shape[0] * probs.shape[1])


@dataclass
class Phantoms:
    """Summaries of ``C`` full pages: per KV head, ``k`` cluster means and their member counts."""

    keys: torch.Tensor  # [Hk, C, k, D] float32
    values: torch.Tensor  # [Hk, C, k, D] float32
    counts: torch.Tensor  # [Hk, C, k] float32 (0 for an empty cluster: its log-bias is -inf)
    assign: torch.Tensor  # [Hk, C, ps] long: the cluster each token belongs to

    @property
    def log_bias(self) -> torch.Tensor:
        return torch.log(self.counts)


def _cluster_means(
    x: torch.Tensor, v: torch.Tensor, assign: torch.Tensor, k: int, keep: torch.Tensor | None = None
):
    onehot = torch.nn.functional.one_hot(assign, k).to(x.dtype)  # [Hk, C, ps, k]
    if keep is not None:  # members that left their cluster (exceptions) count for nothing
        onehot = onehot * keep[..., None].to(x.dtype)
    counts = onehot.sum(dim=2)  # [Hk, C, k]
    denom = counts.clamp(min=1.0)[..., None]
    kmean = torch.einsum("hcpk,hcpd->hckd", onehot, x) / denom
    vmean = torch.einsum("hcpk,hcpd->hckd", onehot, v) / denom
    return kmean, vmean, counts


def build_phantoms(page_keys: torch.Tensor, page_values: torch.Tensor, k: int, iters: int) -> Phantoms:
    """Cluster each page's tokens into ``k`` groups per KV head (keys decide, values follow).

    ``page_keys``/``page_values``: [Hk, C, ps, D].  Start from ``k`` contiguous chunks, then ``iters``
    rounds of nearest-centroid reassignment (empty clusters drop out of the candidate set); the final
    summaries are exact means of their members, so a cluster of identical keys is represented exactly.
    """
    hk, c, ps, _ = page_keys.shape
    if not 1 <= k < ps:
        raise ValueError(f"phantoms_per_page={k} must be in [1, page_size={ps})")
    x = _wide(page_keys)
    v = _wide(page_values)
    assign = (torch.arange(ps, device=x.device) * k // ps).expand(hk, c, ps).contiguous()
    for _ in range(iters):
        centroids, _, counts = _cluster_means(x, v, assign, k)
        dist = (
            (x * x).sum(-1, keepdim=True)
            - 2 * torch.einsum("hcpd,hckd->hcpk", x, centroids)
            + (centroids * centroids).sum(-1)[:, :, None, :]
        )
        dist = dist.masked_fill((counts == 0)[:, :, None, :], float("inf"))
        assign = dist.argmin(dim=-1)
    keys, values, counts = _cluster_means(x, v, assign, k)
    return Phantoms(keys=keys, values=values, counts=counts, assign=assign)


def exception_scores(
    signal: str,
    obs: Observation,
    page_keys: torch.Tensor,
    page_values: torch.Tensor,
    phantoms: Phantoms,
    pages: list[int],
    page_size: int,
) -> torch.Tensor:
    """How badly each token of the candidate pages is represented: [Hk, C, ps] float32, higher worse.

    ``reconstruction`` reads the context alone: the token's key and value distance to its cluster's
    means, each relative to the head's mean distance (so keys and values weigh alike), summed -- a
    token unlike the rest of its page (an outlier key) scores high whatever the question is.
    ``attention`` is the observation queries' attention share of the token (SnapKV's score, per token).
    """
    if signal == "reconstruction":
        x, v = _wide(page_keys), _wide(page_values)
        idx = phantoms.assign[..., None].expand(-1, -1, -1, x.shape[-1])
        ek = (x - phantoms.keys.gather(2, idx)).norm(dim=-1)
        ev = (v - phantoms.values.gather(2, idx)).norm(dim=-1)
        tiny = torch.finfo(ek.dtype).tiny
        return ek / ek.mean(dim=(1, 2), keepdim=True).clamp(min=tiny) + ev / ev.mean(
            dim=(1, 2), keepdim=True
        ).clamp(min=tiny)
    if signal == "attention":
        probs = obs.weights / obs.weights.sum(dim=-1, keepdim=True)
        per_token = probs.sum(dim=1)  # [Hk, N]
        idx = torch.tensor(pages, device=per_token.device)
        tok = (idx[:, None] * page_size + torch.arange(page_size, device=per_token.device)).reshape(-1)
        return per_token[:, tok].reshape(per_token.shape[0], len(pages), page_size)
    raise ValueError(f"unknown exception signal {signal!r}")


def top_exceptions(scores: torch.Tensor, eligible: torch.Tensor, budget: int) -> torch.Tensor:
    """Per KV head, the ``budget`` eligible tokens scoring highest: [Hk, C, ps] bool (ties: earlier
    token first, so the choice is deterministic)."""
    hk = scores.shape[0]
    flat = scores.reshape(hk, -1).masked_fill(~eligible.reshape(1, -1), float("-inf"))
    budget = min(budget, int(eligible.sum()))
    chosen = torch.zeros_like(flat, dtype=torch.bool)
    if budget > 0:
        # a stable descending sort breaks ties by position
        order = torch.sort(flat, dim=-1, descending=True, stable=True).indices[:, :budget]
        chosen.scatter_(1, order, True)
    return chosen.reshape(scores.shape)


def without_exceptions(
    phantoms: Phantoms, page_keys: torch.Tensor, page_values: torch.Tensor, chosen: torch.Tensor
) -> Phantoms:
    """The phantoms recomputed over the tokens that stay summarised (same clusters, exceptions out):
    a cluster left empty gets count 0 (log-bias -inf)."""
    k = phantoms.counts.shape[-1]
    keys, values, counts = _cluster_means(
        _wide(page_keys), _wide(page_values), phantoms.assign, k, keep=~chosen
    )
    return Phantoms(keys=keys, values=values, counts=counts, assign=phantoms.assign)


def phantom_error(
    obs: Observation,
    values: torch.Tensor,
    pages: list[int],
    page_size: int,
    phantoms: Phantoms,
    max_elements: int = 1 << 26,
) -> torch.Tensor:
    """Attention-output error of replacing each page in ``pages`` (alone) by its phantoms: [C] float32.

    With everything else exact, the observation rows' output is O = num / Z; swapping page p for its
    phantoms gives O'_p = (num - num_p + num'_p) / (Z - Z_p + Z'_p).  The error is ||O'_p - O||_2,
    averaged over heads and observation rows.  ``pages`` must be full pages every observation query
    sees whole (the settings check guarantees it: candidates lie before the exact recent window).
    Pages are processed in chunks whose per-page temporaries stay under ``max_elements``.
    """
    if not pages:
        return torch.zeros(0)
    v = _wide(values[0]).to(obs.weights.dtype)  # [Hk, N, D]
    hk, r, n = obs.weights.shape
    d = v.shape[-1]
    chunk = max(1, max_elements // (hk * r * max(page_size, d)))
    z = obs.weights.sum(-1)  # [Hk, R]
    num = torch.einsum("hrn,hnd->hrd", obs.weights, v)
    out = num / z[..., None]
    # pages as their own axis (the partial last page is padded: it is never a candidate), so a
    # chunk of candidates is one index_select of whole pages rather than a gather of their tokens
    n_pages = -(-n // page_size)
    pad = n_pages * page_size - n
    w_pages = torch.nn.functional.pad(obs.weights, (0, pad)).view(hk, r, n_pages, page_size)
    v_pages = torch.nn.functional.pad(v, (0, 0, 0, pad)).view(hk, n_pages, page_size, d)
    idx_all = torch.tensor(pages, device=v.device)
    log_bias = phantoms.log_bias
    errors = []
    for start in range(0, len(pages), chunk):
        idx = idx_all[start : start + chunk]
        w_p = w_pages.index_select(2, idx)  # [Hk, R, C, ps]
        v_p = v_pages.index_select(1, idx)  # [Hk, C, ps, D]
        z_p = w_p.sum(-1)
        num_p = torch.einsum("hrcp,hcpd->hrcd", w_p, v_p)
        pk = phantoms.keys[:, start : start + chunk]
        pv = phantoms.values[:, start : start + chunk]
        bias = log_bias[:, start : start + chunk]  # [Hk, C, k]
        s = torch.einsum("hrd,hckd->hrck", obs.queries, pk) * obs.scaling + bias[:, None]
        w_ph = torch.exp(s - obs.row_max[..., None])  # [Hk, R, C, k]
        z_ph = w_ph.sum(-1)
        num_ph = torch.einsum("hrck,hckd->hrcd", w_ph, pv)
        swapped = (num[:, :, None] - num_p + num_ph) / (z[:, :, None] - z_p + z_ph)[..., None]
        errors.append((swapped - out[:, :, None]).norm(dim=-1).mean(dim=(0, 1)))
    return torch.cat(errors)
