"""KED superfeatures (Chowdhury et al. 2023): a partition of the input's d features, and chimeric samples.

    H = mean_n ∇²_x Σ_c log softmax(f(x_n))_c            (all classes, not the true one; N ≤ 1000 samples)
    W = |H| + |H|ᵀ, zero diagonal                       (how strongly two features interact in the teacher)
    partition = Louvain(W) with exactly M communities    (resolution searched from 1.0 in steps of ±0.01)

Features that interact inside the teacher land in one group, so a chimeric sample, whose group i comes
from training sample a_i, keeps each group's joint structure while mixing groups across samples.

For a piecewise-linear (ReLU) teacher z is locally linear in x, so with J = ∂z/∂x and p = softmax(z),
Σ_c log p_c = Σ_c z_c − C·logsumexp(z) gives H(x) = −C · Jᵀ (diag p − p pᵀ) J: one Jacobian per sample
instead of a full Hessian (`relu_input_hessian`, the fast path). `input_hessian` is the autograd reference
for any twice-differentiable model.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import Tensor, nn

from oracle_kd.core.needs import Artefact, Phase
from oracle_kd.errors import ConfigError, require

if TYPE_CHECKING:
    import networkx as nx

Model = Callable[[Tensor], Tensor]

# a product [n]^M at most this large (or at most 4x the request) is sampled by a permutation of all of it;
# a larger one by drawing with replacement and redrawing the duplicates, which are then rare
_ENUMERATE_UP_TO = 1 << 16


def _logits(model: Model, x: Tensor) -> Tensor:
    """model(x), or its first item for the package's models, which return (logits, features)."""
    out = model(x)
    return out[0] if isinstance(out, (tuple, list)) else out


def _check_samples(x: Tensor, chunk: int) -> None:
    require(x.dim() == 2 and x.shape[0] > 0, "superfeatures.x.shape", tuple(x.shape), "must be (N, d) with N >= 1")
    require(x.is_floating_point(), "superfeatures.x.dtype", str(x.dtype), "must be floating point to differentiate")
    require(chunk >= 1, "superfeatures.chunk", chunk, "must be >= 1")


def input_hessian(model: Model, x: Tensor, chunk: int = 256) -> Tensor:
    """(d, d) mean over the rows of x of ∇²_x Σ_c log_softmax(model(x))_c, by autograd.

    The reference implementation: exact for any model twice differentiable almost everywhere. Samples go
    through torch.func.hessian under vmap `chunk` at a time, which holds chunk·d² numbers at once."""
    _check_samples(x, chunk)

    def summed_log_probs(xi: Tensor) -> Tensor:
        return torch.log_softmax(_logits(model, xi.unsqueeze(0)), dim=-1).sum()

    per_sample = torch.func.vmap(torch.func.hessian(summed_log_probs))
    total = x.new_zeros(x.shape[1], x.shape[1])
    with torch.no_grad():  # torch.func differentiates w.r.t. x regardless; no graph back to the weights
        for part in x.detach().split(chunk):
            total += per_sample(part).sum(dim=0)
    return total / x.shape[0]


def relu_input_hessian(model: Model, x: Tensor, chunk: int = 256) -> Tensor:
    """(d, d) mean of H(x) = −C · Jᵀ (diag p − p pᵀ) J, the input Hessian of Σ_c log softmax for a
    piecewise-linear (ReLU) model, whose own second derivative is zero almost everywhere.

    Needs only the C×d Jacobian per sample (jacrev under vmap), so it is the fast path for a ReLU teacher;
    for a smooth model it drops the curvature of z and is not the Hessian (use `input_hessian`)."""
    _check_samples(x, chunk)

    def one(xi: Tensor) -> Tensor:
        return _logits(model, xi.unsqueeze(0)).squeeze(0)

    jacobian = torch.func.vmap(torch.func.jacrev(one))
    total = x.new_zeros(x.shape[1], x.shape[1])
    with torch.no_grad():  # torch.func differentiates w.r.t. x regardless; no graph back to the weights
        for part in x.detach().split(chunk):
            j = jacobian(part)  # (B, C, d)
            p = torch.softmax(_logits(model, part), dim=-1).to(j.dtype)  # (B, C)
            jp = torch.einsum("bcd,bc->bd", j, p)  # Jᵀp per sample
            # Σ_b Jᵀ(diag p − ppᵀ)J = Σ_b Jᵀ diag(p) J − (Jᵀp)(Jᵀp)ᵀ
            total -= j.shape[1] * (torch.einsum("bcd,bc,bce->de", j, p, j) - jp.T @ jp)
    return total / x.shape[0]


def affinity(h: Tensor) -> Tensor:
    """W = |H| + |H|ᵀ with a zero diagonal: the symmetric, nonnegative edge weights Louvain needs (a
    feature's interaction with itself says nothing about which group it belongs to)."""
    require(h.dim() == 2 and h.shape[0] == h.shape[1], "superfeatures.hessian.shape", tuple(h.shape), "must be (d, d)")
    w = h.abs() + h.abs().T
    w.fill_diagonal_(0)
    return w


def _graph(w: Tensor) -> nx.Graph:
    """The weighted undirected graph of W's upper triangle, with every feature a node, isolated or not."""
    import networkx as nx

    d = w.shape[0]
    g = nx.Graph()
    g.add_nodes_from(range(d))
    rows, cols = torch.triu_indices(d, d, offset=1)
    weights = w[rows, cols].detach().double().cpu()
    keep = weights > 0
    g.add_weighted_edges_from(zip(rows[keep].tolist(), cols[keep].tolist(), weights[keep].tolist()))
    return g


def _canonical(communities) -> list[list[int]]:
    """Each community sorted, the communities ordered by their smallest index (they are disjoint, so
    sorting the sorted lists does exactly that)."""
    return sorted(sorted(int(i) for i in c) for c in communities)


def louvain_search(w: Tensor, groups: int, resolution: float = 1.0, step: float = 0.01, max_tries: int = 100,
                   seed: int = 100) -> tuple[list[list[int]], float]:
    """The partition of W's nodes into exactly `groups` Louvain communities, and the resolution that gave it.

    From `resolution`, the resolution moves by −step when Louvain finds too many communities and +step when
    too few (the released code's search), for at most `max_tries` resolutions. Louvain with a fixed seed is
    deterministic, so coming back to a resolution already tried means the count jumps over `groups` between
    two neighbours; where the released code would give up, the step is halved there (a bisection of that
    bracket) down to step/64. Raises ConfigError (one line) when no resolution gives exactly `groups`."""
    require(w.dim() == 2 and w.shape[0] == w.shape[1], "superfeatures.affinity.shape", tuple(w.shape), "must be (d, d)")
    d = w.shape[0]
    require(1 <= groups <= d, "superfeatures.groups", groups, f"must be in [1, {d}] (the number of features)")
    require(resolution > 0 and step > 0, "superfeatures.resolution, step", (resolution, step), "must both be > 0")
    require(max_tries >= 1, "superfeatures.max_tries", max_tries, "must be >= 1")
    require(bool((w >= 0).all()) and torch.allclose(w, w.T), "superfeatures.affinity", "W",
            "must be symmetric and nonnegative (build it with affinity(H))")
    if groups == 1:
        return [list(range(d))], resolution

    from networkx.algorithms.community import louvain_communities

    g = _graph(w)
    found: dict[int, int] = {}  # k -> number of communities at resolution + k·unit
    unit = step / 64  # the finest step: resolutions are whole multiples of it, so revisits are exact
    k, stride, why = 0, 64, "max_tries reached"
    while len(found) < max_tries:
        r = resolution + k * unit
        if r <= 0:
            why = "the resolution would reach 0"
            break
        communities = louvain_communities(g, weight="weight", resolution=r, seed=seed)
        found[k] = len(communities)
        if found[k] == groups:
            return _canonical(communities), r
        direction = -1 if found[k] > groups else 1
        while k + direction * stride in found and stride > 1:
            stride //= 2  # the count jumps over `groups` within this bracket: look between
        if k + direction * stride in found:
            why = f"the count jumps over {groups} between neighbouring resolutions"
            break
        k += direction * stride
    counts = " or ".join(str(c) for c in sorted(set(found.values())))
    lo, hi = resolution + min(found) * unit, resolution + max(found) * unit
    raise ConfigError(f"superfeatures: Louvain found {counts} communities, never exactly {groups}, in {len(found)} "
                      f"resolutions from {lo:.4f} to {hi:.4f} ({why}); ask for another number of groups")


def louvain_partition(w: Tensor, groups: int, resolution: float = 1.0, step: float = 0.01, max_tries: int = 100,
                      seed: int = 100) -> list[list[int]]:
    """`louvain_search`'s partition alone: `groups` sorted lists of feature indices, canonical order."""
    return louvain_search(w, groups, resolution=resolution, step=step, max_tries=max_tries, seed=seed)[0]


def partition_mask(partition: list[list[int]], d: int) -> Tensor:
    """(M, d) bool, row i marking group i's features; raises ConfigError unless the groups are nonempty and
    cover each of the d features exactly once (what reassembling a chimeric sample relies on)."""
    mask = torch.zeros(len(partition), d, dtype=torch.bool)
    counts = torch.zeros(d, dtype=torch.int64)
    for i, group in enumerate(partition):
        idx = torch.as_tensor(group, dtype=torch.int64)
        require(idx.numel() > 0 and bool(((idx >= 0) & (idx < d)).all()), f"superfeatures.partition[{i}]", group,
                f"must be a nonempty list of feature indices in [0, {d})")
        mask[i, idx] = True
        counts.index_add_(0, idx, torch.ones_like(idx))
    bad = (counts != 1).nonzero().flatten()[:5].tolist()
    require(not bad, "superfeatures.partition", f"{len(partition)} groups", f"must hold each of the {d} features "
            f"exactly once (features {bad} are missing or repeated)")
    return mask


def chimeric_indices(n: int, groups: int, size: int, generator: torch.Generator) -> Tensor:
    """(size, groups) int64 donor indices: distinct rows drawn uniformly from [n]^groups, in random order.

    Row k says which training sample gives each group of chimeric sample k. A small product is sampled by a
    permutation of all of it; a large one (n**groups may dwarf memory) by drawing with replacement, keeping
    each tuple's first draw and redrawing the shortfall, which yields a uniform sample without replacement."""
    require(n >= 1, "superfeatures.n", n, "must be >= 1")
    require(groups >= 1, "superfeatures.groups", groups, "must be >= 1")
    total = n**groups  # a Python int: exact however large
    require(0 <= size <= total, "superfeatures.size", size, f"must be in [0, {n}**{groups} = {total}] (distinct rows)")
    if total <= max(_ENUMERATE_UP_TO, 4 * size):
        flat = torch.randperm(total, generator=generator)[:size]
        digits = [(flat // n**(groups - 1 - i)) % n for i in range(groups)]  # base-n digits, most significant first
        return torch.stack(digits, dim=1) if size else torch.empty(0, groups, dtype=torch.int64)
    rows = torch.empty(0, groups, dtype=torch.int64)
    while rows.shape[0] < size:
        drawn = torch.randint(0, n, (size - rows.shape[0], groups), generator=generator)
        rows = torch.cat([rows, drawn])
        unique, inverse = torch.unique(rows, dim=0, return_inverse=True)
        first = torch.full((unique.shape[0],), rows.shape[0], dtype=torch.int64)
        first.scatter_reduce_(0, inverse, torch.arange(rows.shape[0]), reduce="amin")
        rows = rows[first.sort().values]  # each distinct tuple once, in the order it was first drawn
    return rows


def chimeric_samples(x: Tensor, partition: list[list[int]], donors: Tensor) -> Tensor:
    """(size, d) chimeric samples, out[k, S_i] = x[donors[k, i], S_i]: group i from sample donors[k, i], the
    groups reassembled in the original feature order. Copies values only, so any dtype works (uint8 pixels)."""
    require(x.dim() == 2, "superfeatures.x.shape", tuple(x.shape), "must be (N, d) (flatten images first)")
    n, d = x.shape
    partition_mask(partition, d)
    require(donors.dim() == 2 and donors.shape[1] == len(partition), "superfeatures.donors.shape",
            tuple(donors.shape), f"must be (size, {len(partition)}), one donor per group")
    require(donors.numel() == 0 or (int(donors.min()) >= 0 and int(donors.max()) < n), "superfeatures.donors",
            "indices", f"must lie in [0, {n})")
    donors = donors.to(device=x.device, dtype=torch.int64)
    out = x.new_empty(donors.shape[0], d)
    for i, group in enumerate(partition):
        cols = torch.as_tensor(group, dtype=torch.int64, device=x.device)
        out[:, cols] = x[donors[:, i, None], cols[None, :]]
    return out


# ----------------------------------------------------------------------------- the artefact and the phase
NAME = "superfeatures"  # the artefact's name: its store folder, its key in a run's identity, the model option it fills
SAMPLES = 1000  # training samples the input Hessian is averaged over (the released code's N_hess)
DEFAULT_GROUPS = 4  # M in the KED code's every experiment


@torch.no_grad()
def mean_prediction(model: nn.Module, sample: Callable[[Tensor], Tensor], count: int, batch: int = 512) -> Tensor:
    """The model's softmax averaged over the training split, in float64 (KED's prior π)."""
    total: Tensor | None = None
    for lo in range(0, count, batch):
        p = torch.softmax(model(sample(torch.arange(lo, min(lo + batch, count))))[0].double(), dim=1).sum(dim=0)
        total = p if total is None else total + p
    assert total is not None, "an empty training split"
    return total / count


def superfeatures_from(model: nn.Module, sample: Callable[[Tensor], Tensor], count: int, seed: int, *,
                       groups: int, samples: int) -> dict[str, Any]:
    """Partition and log-prior from the ordinary teacher `model` (eval mode): the ReLU input Hessian over
    `samples` training samples drawn by the run seed, Louvain to exactly `groups` groups, π = its mean
    prediction. `sample(indices)` gives those training images, normalised, on the model's device."""
    idx = torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:samples]
    x = sample(idx)
    shape = tuple(x.shape[1:])
    h = relu_input_hessian(lambda v: model(v.view(-1, *shape))[0], x.flatten(1))
    partition, resolution = louvain_search(affinity(h.cpu().double()), groups)
    log_prior = mean_prediction(model, sample, count).log().float().cpu().tolist()
    return {"partition": partition, "log_prior": log_prior, "resolution": resolution,
            "sizes": [len(p) for p in partition]}


def superfeature_artefact(groups: int, default: bool = False) -> Artefact:
    """The input superfeatures of M = `groups` as an artefact of the ordinary teacher's run."""
    return Artefact(NAME, (("groups", groups), ("samples", SAMPLES)),
                    functools.partial(superfeatures_from, groups=groups, samples=SAMPLES), default)


def chimeric_images(images: Tensor, made: dict[str, Any], seed: int, *, size: int) -> Tensor:
    """`size` chimeric uint8 images from the training images: superfeature i of each taken from a random real
    sample a_i (distinct donor tuples, drawn by the run seed); `made` holds the run's artefacts."""
    g = torch.Generator().manual_seed(seed)
    partition = made[NAME]["partition"]
    donors = chimeric_indices(len(images), len(partition), size, g)
    return chimeric_samples(images.flatten(1), partition, donors).view(size, *images.shape[1:]).contiguous()


def chimeric_phase(epochs: int, size: int, lr: float) -> Phase:
    """KED's chimeric phase: `epochs` over `size` chimeric samples, labelled by the teacher."""
    return Phase("chimeric", epochs, lr, functools.partial(chimeric_images, size=size), (("chimeric_size", size),))
