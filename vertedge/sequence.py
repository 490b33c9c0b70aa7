"""Sequence Loss and multi-view identification voting (Wu et al. 2023, Sec. 2.3-2.4, Eq. 1, 2, 6).

A view's probability map `P: (n, c) float` has one row per vertebra, cranial -> caudal, and one
column per class of `classes`, a tuple of VerSe labels in spine order (`labels.SPINE_ORDER`).
A label sequence goes down the spine: from class a on row i-1 to class b on row i the step earns
`beta * P[i, b]` when b is an anatomical successor of a ("next") and `alpha * P[i, b]` when b == a
("same") or b is a successor's successor ("skip one"); any other step is not allowed. The first
row earns `beta * P[0, b]`, so a perfect one-hot ascending P scores `beta * n` and loses 0.

T13 and L6 are optional variants: T12 -> T13, T12 -> L1, T13 -> L1 and L5 -> L6 are all "next".
Successors are anatomical, not positions in `classes`: with a class list lacking T5, T4 -> T6 is a
skip. Where the caller knows two consecutive rows are two vertebrae (`same_ok`), "same" is not
allowed between them, where it knows rows i and i + 2 are (`same_twice_ok`), not twice in a
row through the row between, and where it knows no vertebra lies between two rows (`skip_ok`),
not "skip one". The dynamic programme is a max-plus recursion, one NumPy max per row, batched over leading
axes so K views are scored at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from .errors import VertedgeError
from .labels import NAMES, SPINE_ORDER, successors

ALPHA = 0.1
BETA = 0.8


def _check_classes(classes: Sequence[int]) -> tuple[int, ...]:
    """`classes` as a tuple of distinct VerSe labels in spine order, or VertedgeError."""
    out = tuple(int(c) for c in classes)
    if not out:
        raise VertedgeError("sequence: the class list is empty")
    unknown = [c for c in out if c not in SPINE_ORDER]
    if unknown:
        raise VertedgeError(f"sequence: {unknown} are not vertebra labels {SPINE_ORDER}")
    pos = [SPINE_ORDER.index(c) for c in out]
    if any(b <= a for a, b in zip(pos, pos[1:])):
        names = [NAMES[c] for c in out]
        raise VertedgeError(f"sequence: classes {names} are not distinct in cranio-caudal order")
    return out


@lru_cache(maxsize=64)
def _transitions(
    classes: tuple[int, ...], alpha: float, beta: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(weights, penalty, no_skip), (c, c) read-only: step weights (0 where not allowed), 0 / -inf
    mask, and the mask with "skip one" not allowed."""
    if not (beta > 0 and alpha >= 0):
        raise VertedgeError(f"sequence: need beta > 0 and alpha >= 0, got {alpha=}, {beta=}")
    c = len(classes)
    index = {label: j for j, label in enumerate(classes)}
    weights = np.zeros((c, c))
    allowed = np.eye(c, dtype=bool)
    skipped = np.zeros((c, c), dtype=bool)
    weights[np.diag_indices(c)] = alpha
    for a, label in enumerate(classes):
        nxt = successors(label)
        # T12 -> L1 is both "next" and "skip one" (via T13): "next" wins.
        skip = frozenset().union(*(successors(s) for s in nxt)) - nxt
        for targets, w in ((nxt, beta), (skip, alpha)):
            cols = [index[t] for t in targets if t in index]
            weights[a, cols] = w
            allowed[a, cols] = True
        skipped[a, [index[t] for t in skip if t in index]] = True
    penalty = np.where(allowed, 0.0, -np.inf)
    no_skip = np.where(allowed & ~skipped, 0.0, -np.inf)
    for array in (weights, penalty, no_skip):
        array.flags.writeable = False
    return weights, penalty, no_skip


def transition_weights(
    classes: Sequence[int], alpha: float = ALPHA, beta: float = BETA
) -> np.ndarray:
    """(c, c) float: weight of the step from class a (row) to class b (column); 0 if not allowed."""
    weights = _transitions(_check_classes(classes), float(alpha), float(beta))[0]
    return weights.copy()


def _as_maps(P: np.ndarray, classes: tuple[int, ...]) -> np.ndarray:
    """P as float64 (..., n, c) with c == len(classes) and finite values, or VertedgeError."""
    P = np.asarray(P, dtype=float)
    if P.ndim < 2 or P.shape[-1] != len(classes):
        raise VertedgeError(
            f"sequence: probability map of shape {P.shape}; expected (..., n, {len(classes)})"
        )
    return P


def _two_d(P: np.ndarray) -> np.ndarray:
    """P as a (n, c) float array, or VertedgeError."""
    P = np.asarray(P, dtype=float)
    if P.ndim != 2:
        raise VertedgeError(f"sequence: one probability map must be 2D (n, c), got shape {P.shape}")
    return P


def _stack(Ps: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """K maps (n, c) stacked as a float (K, n, c) array; VertedgeError when their shapes differ."""
    try:
        return np.asarray(Ps, dtype=float)
    except ValueError as e:
        raise VertedgeError(f"sequence: the views' maps differ in shape ({e})") from e


def _as_valid(valid: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """(..., n) bool row mask matching maps of `shape` (..., n, c); all True when None."""
    if valid is None:
        return np.ones(shape[:-1], dtype=bool)
    valid = np.asarray(valid, dtype=bool)
    if valid.shape != shape[:-1]:
        raise VertedgeError(f"sequence: valid mask of shape {valid.shape}; expected {shape[:-1]}")
    return valid


def _candidates(
    opt: np.ndarray, row: np.ndarray, weights: np.ndarray, penalty: np.ndarray
) -> np.ndarray:
    """(..., c, c) accumulated score of reaching class b (last axis) from class a (axis -2)."""
    return opt[..., :, None] + weights * row[..., None, :] + penalty


def _checked_rows(P: np.ndarray, valid: np.ndarray) -> None:
    """Refuse non-finite probabilities in rows that take part in the recursion."""
    if not np.isfinite(P[valid]).all():
        raise VertedgeError("sequence: the probability map holds NaN or infinite values")


def _relative_scores(
    P: np.ndarray, classes: tuple[int, ...], alpha: float, beta: float, valid: np.ndarray
) -> np.ndarray:
    """(...,) max_j OPT[n, j] / beta for maps P: (..., n, c) over their `valid: (..., n)` rows.

    Runs in units of beta (a "next" step weighs exactly 1) so a perfect one-hot sequence sums to
    exactly n and its loss is exactly 0, free of rounding.
    """
    _checked_rows(P, valid)
    weights, penalty, _ = _transitions(classes, float(alpha), float(beta))
    weights = weights / beta
    opt = np.zeros(P.shape[:-2] + P.shape[-1:])
    started = np.zeros(P.shape[:-2], dtype=bool)
    for i in range(P.shape[-2]):
        row = np.where(valid[..., i, None], P[..., i, :], 0.0)
        step = _candidates(opt, row, weights, penalty).max(axis=-2)
        new = np.where(started[..., None], step, row)
        opt = np.where(valid[..., i, None], new, opt)
        started |= valid[..., i]
    return opt.max(axis=-1)


def sequence_scores(
    Ps: np.ndarray,
    classes: Sequence[int],
    alpha: float = ALPHA,
    beta: float = BETA,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """(...,) best accumulated probability max_j OPT[n, j] (Eq. 1) of maps Ps: (..., n, c).

    Rows with `valid: (..., n) bool` False are left out (the sequence runs over the others);
    a map with no valid row scores 0.
    """
    classes = _check_classes(classes)
    P = _as_maps(Ps, classes)
    return beta * _relative_scores(P, classes, alpha, beta, _as_valid(valid, P.shape))


def sequence_losses(
    Ps: np.ndarray,
    classes: Sequence[int],
    alpha: float = ALPHA,
    beta: float = BETA,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """(...,) Sequence Loss Ls = 1 - score / (beta * n) (Eq. 2) of maps Ps: (..., n, c).

    n counts the valid rows of each map. In [0, 1] for probabilities in [0, 1]; 1 for a map with
    no valid row (it carries no evidence).
    """
    classes = _check_classes(classes)
    P = _as_maps(Ps, classes)
    valid = _as_valid(valid, P.shape)
    n = valid.sum(axis=-1)
    return 1.0 - _relative_scores(P, classes, alpha, beta, valid) / np.maximum(n, 1)


def sequence_score(
    P: np.ndarray, classes: Sequence[int], alpha: float = ALPHA, beta: float = BETA
) -> float:
    """Best accumulated probability max_j OPT[n, j] (Eq. 1) of P: (n, c), rows cranial->caudal."""
    return float(sequence_scores(_two_d(P), classes, alpha, beta))


def sequence_loss(
    P: np.ndarray, classes: Sequence[int], alpha: float = ALPHA, beta: float = BETA
) -> float:
    """Sequence Loss (Eq. 2) of P: (n, c), rows cranial->caudal; 0 for a perfect sequence."""
    return float(sequence_losses(_two_d(P), classes, alpha, beta))


def _as_steps(steps: np.ndarray | None, n: int, name: str = "same_ok", span: int = 1) -> np.ndarray:
    """(max(n - span, 0),) bool: may rows i, i + span of n be joined by "same" steps (`name` in the
    error); all True when None."""
    m = max(n - span, 0)
    if steps is None:
        return np.ones(m, dtype=bool)
    steps = np.asarray(steps, dtype=bool)
    if steps.shape != (m,):
        raise VertedgeError(f"sequence: {name} of shape {steps.shape}; expected ({m},) for {n} rows")
    return steps


def _best_path(
    P: np.ndarray,
    classes: tuple[int, ...],
    alpha: float,
    beta: float,
    same_ok: np.ndarray,
    floor: float = 0.0,
    twice_ok: np.ndarray | None = None,
    skip_ok: np.ndarray | None = None,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """Column indices (n,) of the best sequence through P: (n, c), n >= 1, and its score (Eq. 1).

    `same_ok: (n - 1,) bool` False forbids the "same" step into row i + 1 (rows i, i + 1 are known
    to be two vertebrae); `twice_ok: (n - 2,) bool` False forbids two "same" steps in a row from
    row i to row i + 2 (rows i, i + 2 are two vertebrae, so the row between may join one of them,
    not both; None: all allowed); `skip_ok: (n - 1,) bool` False forbids "skip one" into row i + 1
    (no vertebra can lie between rows i and i + 1; None: all allowed). A class under `floor` on a
    row, or False in `allowed: (n, c) bool` (None: all allowed), is no state of it, unless no
    sequence is left without one: the floor gives way first, then `allowed`; where none is left
    even then, the steps' bans give way too. The
    recursion keeps two scores per class: reached by a step to another class, and reached by "same".
    """
    n, c = P.shape
    weights, penalty, no_skip = _transitions(classes, float(alpha), float(beta))
    weights = weights / beta  # in units of beta, as in _relative_scores
    same_w = np.diag(weights).copy()
    move, move_next = penalty.copy(), no_skip.copy()
    move[np.diag_indices(c)] = move_next[np.diag_indices(c)] = -np.inf
    twice = _as_steps(twice_ok, n, "same_twice_ok", span=2)
    skips = _as_steps(skip_ok, n, "skip_ok")
    never = np.full(c, -np.inf)
    ruled_out = np.where(P < floor, -np.inf, 0.0)
    if allowed is not None:
        ruled_out[~allowed] = -np.inf
    cols = np.arange(c)
    moved_from = np.zeros((n, c), dtype=int)  # class of row i - 1 a step to another class came from
    moved_state = np.zeros((n, c), dtype=int)  # ... and how that class was reached (1: by "same")
    same_state = np.zeros((n, c), dtype=int)  # how row i - 1's class was reached before a "same" step
    opt = np.stack([P[0] + ruled_out[0], np.full(c, -np.inf)])
    for i in range(1, n):
        best_state = opt.argmax(axis=0)
        cand = _candidates(opt[best_state, cols], P[i], weights, move if skips[i - 1] else move_next)
        moved_from[i] = cand.argmax(axis=0)
        moved_state[i] = best_state[moved_from[i]]
        moved = cand[moved_from[i], cols]
        from_moved = opt[0] if same_ok[i - 1] else never
        from_same = opt[1] if same_ok[i - 1] and (i < 2 or twice[i - 2]) else never
        same_state[i] = from_same > from_moved
        same = np.maximum(from_moved, from_same) + same_w * P[i]
        opt = np.stack([moved, same]) + ruled_out[i]
    if not np.isfinite(opt).any():
        if floor > 0:  # the floor gives way first: a count from outside the views outweighs a low vote
            return _best_path(P, classes, alpha, beta, same_ok, 0.0, twice_ok, skip_ok, allowed)
        if allowed is not None:
            return _best_path(P, classes, alpha, beta, same_ok, 0.0, twice_ok, skip_ok)
        if not (same_ok.all() and twice.all() and skips.all()):
            # more rows than the steps the gaps allow can name (a whole spine whose views found
            # several vertebrae twice at regular-looking gaps): the gaps give way, as the floor
            # does; else every row would be named the first class
            return _best_path(P, classes, alpha, beta, np.ones_like(same_ok))
    state, last = np.unravel_index(int(opt.argmax()), opt.shape)
    path = np.empty(n, dtype=int)
    path[-1] = last
    for i in range(n - 1, 0, -1):
        b = path[i]
        if state == 1:
            path[i - 1], state = b, same_state[i, b]
        else:
            path[i - 1], state = moved_from[i, b], moved_state[i, b]
    return path, float(beta * opt.max())


def decode(
    V: np.ndarray,
    classes: Sequence[int],
    alpha: float = ALPHA,
    beta: float = BETA,
    same_ok: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """Best label sequence of V: (n, c), rows cranial->caudal -> ((n,) int VerSe labels, its score).

    Backtracks the recursion of Eq. 1 from the best class of the last row, so consecutive labels
    are always an allowed step (same, next or skip one); `same_ok: (n - 1,) bool` False forbids
    "same" between rows i and i + 1.
    """
    classes = _check_classes(classes)
    P = _as_maps(_two_d(V), classes)
    _checked_rows(P, np.ones(P.shape[0], dtype=bool))
    same_ok = _as_steps(same_ok, P.shape[0])
    if P.shape[0] == 0:
        return np.zeros(0, dtype=int), 0.0
    path, score = _best_path(P, classes, alpha, beta, same_ok)
    return np.asarray(classes, dtype=int)[path], score


def vote(
    Ps: Sequence[np.ndarray] | np.ndarray,
    classes: Sequence[int],
    alpha: float = ALPHA,
    beta: float = BETA,
    valid: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Voted map V: (n, c) and view weights W: (K,) (Eq. 6) from K maps Ps: (K, n, c).

    W_k = (1 - Ls_k) / sum_a (1 - Ls_a), with Ls_k over the rows view k saw (`valid: (K, n) bool`).
    Each row of V is the W-weighted mean over the views that saw it; a row no view saw is all 0.
    Equal weights when no view has any sequence evidence (every Ls = 1).
    """
    P = _as_maps(_stack(Ps), _check_classes(classes))
    if P.ndim != 3:
        raise VertedgeError(f"sequence: views must stack to (K, n, c), got shape {P.shape}")
    valid = _as_valid(valid, P.shape)
    good = 1.0 - sequence_losses(P, classes, alpha, beta, valid)
    total = good.sum()
    weights = good / total if total > 0 else np.full(len(good), 1.0 / max(len(good), 1))
    row_w = weights[:, None] * valid  # (K, n): a view's weight on the rows it saw
    summed = np.einsum("kn,knc->nc", row_w, np.where(valid[..., None], P, 0.0))
    norm = row_w.sum(axis=0)[:, None]
    V = np.divide(summed, norm, out=np.zeros_like(summed), where=norm > 0)
    return V, weights


def identify(
    Ps: Sequence[np.ndarray] | np.ndarray,
    classes: Sequence[int],
    alpha: float = ALPHA,
    beta: float = BETA,
    valid: np.ndarray | None = None,
    same_ok: np.ndarray | None = None,
    evidence: np.ndarray | None = None,
    floor: float = 0.0,
    same_twice_ok: np.ndarray | None = None,
    skip_ok: np.ndarray | None = None,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Labels (n,) int and confidences (n,) float in [0, 1] for K maps Ps: (K, n, c) (Sec. 2.4).

    Votes the views (Eq. 6), multiplies each voted row by `evidence` (n, c), a likelihood per class
    from outside the views (the ribs, `ribs.likelihood`), normalises each row to sum 1, decodes it
    with the DP (`same_ok` as in `decode`; `same_twice_ok: (n - 2,) bool` False forbids rows i and
    i + 2 to be joined through the row between by two "same" steps; `skip_ok: (n - 1,) bool` False
    forbids "skip one" between rows i and i + 1) over the classes each row holds at `floor` or
    more; the
    confidence of a row is its normalised probability of the decoded label. The DP sums
    probabilities, so a class ruled out on one row costs it at most that row's share, and where
    the net reads the rows below a level off the sum can still name a vertebra what its ribs rule
    out (a T13 without a rib); the floor keeps such a class out of the decode, and gives way where
    every allowed sequence needs one. `allowed: (n, c) bool` keeps the classes a count outside the
    views rules out (the thoracolumbar junction, `ribs.junction_classes`; the sacrum,
    `sacrum.last_lumbar_classes`) out of the decode, not out of the confidences: a row's confidence
    stays what the views and `evidence` give its label.
    """
    classes = _check_classes(classes)
    V, _ = vote(Ps, classes, alpha, beta, valid)
    if evidence is not None:
        V = V * _as_maps(evidence, classes)
    same_ok = _as_steps(same_ok, V.shape[0])
    same_twice_ok = _as_steps(same_twice_ok, V.shape[0], "same_twice_ok", span=2)
    skip_ok = _as_steps(skip_ok, V.shape[0], "skip_ok")
    mass = V.sum(axis=1, keepdims=True)
    V = np.divide(V, mass, out=np.zeros_like(V), where=mass > 0)
    if V.shape[0] == 0:
        return np.zeros(0, dtype=int), np.zeros(0)
    if allowed is not None:
        allowed = np.asarray(allowed, dtype=bool)
        if allowed.shape != V.shape:
            raise VertedgeError(f"sequence: allowed of shape {allowed.shape}; expected {V.shape}")
    path, _ = _best_path(V, classes, alpha, beta, same_ok, floor, same_twice_ok, skip_ok, allowed)
    return np.asarray(classes, dtype=int)[path], V[np.arange(len(path)), path]
