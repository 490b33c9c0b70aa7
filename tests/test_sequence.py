"""Sequence Loss DP (Eq. 1-2) against brute force, and multi-view voting (Eq. 6)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vertedge.errors import VertedgeError
from vertedge.labels import LABELS, SPINE_ORDER, successors
from vertedge.sequence import (
    decode,
    identify,
    sequence_loss,
    sequence_losses,
    sequence_score,
    sequence_scores,
    transition_weights,
    vote,
)

ALPHA, BETA = 0.1, 0.8
ALL = SPINE_ORDER


def _labels(*names: str) -> tuple[int, ...]:
    return tuple(LABELS[n] for n in names)


def _next(label: int) -> set[int]:
    """Hand-written anatomy, independent of the module: T13 and L6 are optional variants."""
    variants = {LABELS["T12"]: {LABELS["T13"], LABELS["L1"]}, LABELS["T13"]: {LABELS["L1"]},
                LABELS["L5"]: {LABELS["L6"]}, LABELS["L6"]: set()}
    return variants.get(label, {label + 1})


def _step_weight(a: int, b: int) -> float | None:
    """Weight of the step a -> b by the brief's rule, None when the step is not allowed."""
    if b in _next(a):
        return BETA
    if b == a or any(b in _next(s) for s in _next(a)):
        return ALPHA
    return None


def _brute_force(P: np.ndarray, classes: tuple[int, ...]) -> tuple[float, set[tuple[int, ...]]]:
    """Best score over every label sequence, and the set of sequences that reach it."""
    best, arg = -np.inf, set()
    for seq in itertools.product(range(len(classes)), repeat=P.shape[0]):
        total = BETA * P[0, seq[0]]
        for i in range(1, len(seq)):
            w = _step_weight(classes[seq[i - 1]], classes[seq[i]])
            if w is None:
                break
            total += w * P[i, seq[i]]
        else:
            labels = tuple(classes[j] for j in seq)
            if total > best + 1e-12:
                best, arg = total, {labels}
            elif abs(total - best) <= 1e-12:
                arg.add(labels)
    return best, arg


def _one_hot(names: list[str], classes: tuple[int, ...] = ALL) -> np.ndarray:
    return np.eye(len(classes))[[classes.index(LABELS[n]) for n in names]]


CLASS_LISTS = st.one_of(
    # Windows over the spine, so T12/T13/L1 and L5/L6 variants show up often.
    st.integers(0, len(ALL) - 2).flatmap(
        lambda s: st.integers(2, 6).map(lambda c: ALL[s : s + c])
    ),
    st.just(_labels("T11", "T12", "T13", "L1", "L2")),
    st.just(_labels("L3", "L4", "L5", "L6")),
    # Subsets with gaps: anatomical, not positional, successors.
    st.lists(st.sampled_from(ALL), min_size=1, max_size=6, unique=True).map(
        lambda xs: tuple(sorted(xs, key=ALL.index))
    ),
)


@settings(max_examples=150, deadline=None)
@given(classes=CLASS_LISTS, n=st.integers(1, 5), seed=st.integers(0, 2**32 - 1))
def test_dp_matches_brute_force(classes: tuple[int, ...], n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    P = rng.dirichlet(np.full(len(classes), 0.5), size=n)
    best, winners = _brute_force(P, classes)
    assert sequence_score(P, classes) == pytest.approx(best, abs=1e-12)
    labels, score = decode(P, classes)
    assert score == pytest.approx(best, abs=1e-12)
    assert tuple(int(x) for x in labels) in winners


def test_transition_weights_variants() -> None:
    W = transition_weights(ALL)
    w = lambda a, b: W[ALL.index(LABELS[a]), ALL.index(LABELS[b])]  # noqa: E731
    assert w("T12", "L1") == w("T12", "T13") == w("T13", "L1") == w("L5", "L6") == BETA
    assert w("C7", "T1") == w("C1", "C2") == BETA
    assert w("T11", "L1") == w("T12", "L2") == w("T11", "T13") == w("L4", "L6") == ALPHA
    assert w("T5", "T5") == ALPHA
    assert w("C1", "C4") == w("C3", "C2") == w("L1", "T13") == w("L6", "L5") == 0.0


def test_transition_weights_follow_anatomy_not_columns() -> None:
    W = transition_weights(_labels("T4", "T6", "T8"))
    assert W[0, 1] == ALPHA  # T4 -> T6 skips T5
    assert W[0, 2] == 0.0  # T4 -> T8 skips three


@pytest.mark.parametrize("bad", [(), (3, 2), (5, 5), (26,), (27, 1)])
def test_bad_class_lists_raise(bad: tuple[int, ...]) -> None:
    with pytest.raises(VertedgeError):
        transition_weights(bad)


def test_loss_zero_for_perfect_sequences() -> None:
    assert sequence_loss(_one_hot(["C3", "C4", "C5", "C6", "C7", "T1"]), ALL) == 0.0
    # A normal spine (no T13) and one with T13 both follow the anatomy.
    assert sequence_loss(_one_hot(["T11", "T12", "L1", "L2"]), ALL) == 0.0
    assert sequence_loss(_one_hot(["T11", "T12", "T13", "L1", "L2"]), ALL) == 0.0
    assert sequence_loss(_one_hot(["L4", "L5", "L6"]), ALL) == 0.0


def test_loss_grows_with_swaps() -> None:
    names = ["T3", "T4", "T5", "T6", "T7", "T8", "T9", "T10"]
    perfect = _one_hot(names)
    one_swap = perfect[[0, 1, 3, 2, 4, 5, 6, 7]]
    two_swaps = perfect[[1, 0, 3, 2, 5, 4, 7, 6]]
    losses = [sequence_loss(P, ALL) for P in (perfect, one_swap, two_swaps)]
    assert losses[0] == 0.0
    assert 0.0 < losses[1] < losses[2] <= 1.0


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 12), seed=st.integers(0, 2**32 - 1))
def test_loss_in_unit_interval(n: int, seed: int) -> None:
    P = np.random.default_rng(seed).dirichlet(np.full(len(ALL), 0.3), size=n)
    assert 0.0 <= sequence_loss(P, ALL) <= 1.0


def test_batched_scores_equal_single() -> None:
    rng = np.random.default_rng(0)
    Ps = rng.dirichlet(np.ones(len(ALL)), size=(4, 7))
    assert np.allclose(sequence_scores(Ps, ALL), [sequence_score(P, ALL) for P in Ps])
    assert np.allclose(sequence_losses(Ps, ALL), [sequence_loss(P, ALL) for P in Ps])


def test_valid_mask_equals_dropping_rows() -> None:
    rng = np.random.default_rng(1)
    Ps = rng.dirichlet(np.ones(len(ALL)), size=(3, 6))
    valid = np.array([[1, 0, 1, 1, 0, 1], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
    Ps[~valid] = np.nan  # rows a view did not see may hold anything
    losses = sequence_losses(Ps, ALL, valid=valid)
    assert losses[0] == pytest.approx(sequence_loss(Ps[0][valid[0]], ALL))
    assert losses[1] == 1.0
    assert losses[2] == pytest.approx(sequence_loss(Ps[2], ALL))


def test_decode_corrects_an_outlier_row() -> None:
    names = ["L1", "L2", "L3", "L4", "L5"]
    V = 0.9 * _one_hot(names) + 0.1 / len(ALL)
    V[2] = _one_hot(["T6"])[0] * 0.6 + _one_hot(["L3"])[0] * 0.4  # argmax says T6
    labels, _ = decode(V, ALL)
    assert labels.tolist() == list(_labels(*names))


def test_decode_same_ok_makes_two_solid_vertebrae_a_t13() -> None:
    # The net calls a T13 "T12" as well: the cheapest normal-count reading is a duplicate T12.
    V = 0.9 * _one_hot(["T11", "T12", "T12", "L1", "L2"]) + 0.01
    V[2, ALL.index(LABELS["T13"])] = 0.05
    labels, _ = decode(V, ALL)
    assert labels.tolist() == list(_labels("T11", "T12", "T12", "L1", "L2"))
    labels, _ = decode(V, ALL, same_ok=np.array([True, False, True, True]))
    assert labels.tolist() == list(_labels("T11", "T12", "T13", "L1", "L2"))
    Ps = np.stack([V, V])
    assert identify(Ps, ALL, same_ok=np.array([True, False, True, True]))[0].tolist() == labels.tolist()
    with pytest.raises(VertedgeError, match="same_ok"):
        decode(V, ALL, same_ok=np.ones(5, bool))


def test_a_row_between_two_vertebrae_joins_one_of_them_not_both() -> None:
    """T11 found twice (rows 1 and 2, the second weak), and the net reads T12 and T13 a level high
    ("T11", "T12"): joining the weak row to both its neighbours merges T11 and T12 and keeps the
    normal count. With rows 1 and 3 known to be two vertebrae (`same_twice_ok`), the weak row
    joins one of them and the T13 is named."""
    V = 0.9 * _one_hot(["T10", "T11", "T11", "T11", "T12", "L1"]) + 0.01
    V[4, ALL.index(LABELS["T13"])] = 0.05
    same_ok = np.array([False, True, True, False, False])  # only the weak row may join a neighbour
    labels, _ = decode(V, ALL, same_ok=same_ok)
    assert labels.tolist() == list(_labels("T10", "T11", "T11", "T11", "T12", "L1"))  # the merge
    assert identify(V[None], ALL, same_ok=same_ok)[0].tolist() == labels.tolist()  # None: as before
    twice = np.array([True, False, True, True])  # rows 1 and 3 are two vertebrae
    read, _ = identify(V[None], ALL, same_ok=same_ok, same_twice_ok=twice)
    assert read[4] == LABELS["T13"] and read[5] == LABELS["L1"]
    assert (read[1] == read[2]) != (read[2] == read[3])  # one join, not two
    with pytest.raises(VertedgeError, match="same_twice_ok"):
        identify(V[None], ALL, same_ok=same_ok, same_twice_ok=np.ones(5, bool))


def test_no_label_is_skipped_where_no_vertebra_can_lie_between() -> None:
    """The top row read T12 (its ribs), the four below read a level low (L2-L5 on L1-L4): the
    decode skips L1 to follow them. Where the gaps say no vertebra lies between two rows
    (`skip_ok` False), every step is "next" (or "same")."""
    V = 0.6 * _one_hot(["T12", "L2", "L3", "L4", "L5"]) + 0.35 * _one_hot(["L1", "L1", "L2", "L3", "L4"]) + 0.01
    V[0] = 0.9 * _one_hot(["T12"])[0] + 0.01
    read, _ = identify(V[None], ALL)
    assert read.tolist() == list(_labels("T12", "L2", "L3", "L4", "L5"))  # the skip
    read, _ = identify(V[None], ALL, skip_ok=np.zeros(4, bool))
    assert all(int(b) in successors(int(a)) for a, b in zip(read[:-1], read[1:]))
    read, _ = identify(V[None], ALL, skip_ok=np.array([True, False, False, False]))
    assert read.tolist() == list(_labels("T12", "L2", "L3", "L4", "L5"))  # a vertebra may lie above row 1
    with pytest.raises(VertedgeError, match="skip_ok"):
        identify(V[None], ALL, skip_ok=np.ones(5, bool))


def test_identify_never_names_a_vertebra_what_its_evidence_rules_out() -> None:
    """An L6 spine whose lumbar vertebrae the net reads a level high: with the "same" step barred,
    the sum over the rows is best with a T13 on the first lumbar vertebra, which the ribs rule
    out (no rib beside it); a class under the floor is not a state of the decode."""
    classes = tuple(LABELS[n] for n in ("T11", "T12", "T13", "L1", "L2", "L3", "L4"))
    V = np.array([
        [0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # T12
        [0.0, 0.5, 0.001, 0.499, 0.0, 0.0, 0.0],  # L1, no rib: T13 all but ruled out
        [0.0, 0.0, 0.0, 0.7, 0.3, 0.0, 0.0],  # L2, read L1
        [0.0, 0.0, 0.0, 0.0, 0.7, 0.3, 0.0],  # L3, read L2
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.7, 0.3],  # L4, read L3
    ])
    apart = np.zeros(4, bool)
    read, conf = identify(V[None], classes, same_ok=apart)
    assert read.tolist() == list(_labels("T12", "T13", "L1", "L2", "L3")) and conf[1] < 0.01
    read, _ = identify(V[None], classes, same_ok=apart, floor=0.01)
    assert read.tolist() == list(_labels("T12", "L1", "L2", "L3", "L4"))
    # where every allowed sequence passes a class under the floor, the floor gives way
    tight = tuple(LABELS[n] for n in ("L1", "L2", "L3"))
    W = np.array([[0.9, 0.05, 0.05], [0.5, 0.005, 0.495], [0.05, 0.05, 0.9]])
    read, _ = identify(W[None], tight, same_ok=np.zeros(2, bool), floor=0.01)
    assert read.tolist() == list(_labels("L1", "L2", "L3"))


def test_more_rows_than_the_steps_allow_are_still_named_along_the_spine() -> None:
    """Four rows over three classes with "same" barred between every pair (the views found a
    vertebra twice at regular-looking gaps): no sequence keeps the bar, so the bar gives way, as
    the floor does, and the rows are named as read, not every one the first class."""
    tight = tuple(LABELS[n] for n in ("L3", "L4", "L5"))
    W = np.array([[0.9, 0.05, 0.05], [0.1, 0.85, 0.05], [0.1, 0.8, 0.1], [0.05, 0.05, 0.9]])
    for floor in (0.0, 0.01):
        read, conf = identify(W[None], tight, same_ok=np.zeros(3, bool), floor=floor,
                              same_twice_ok=np.zeros(2, bool), skip_ok=np.zeros(3, bool))
        assert read.tolist() == list(_labels("L3", "L4", "L4", "L5"))
        assert conf.min() > 0.5


def _views(names: list[str], k: int, rng: np.random.Generator, noise: float = 0.1) -> np.ndarray:
    """k noisy probability maps (k, n, c) peaked on `names`."""
    P = _one_hot(names)[None] + noise * rng.random((k, len(names), len(ALL)))
    return P / P.sum(axis=-1, keepdims=True)


def test_vote_equal_weights_for_equal_views() -> None:
    P = _views(["T1", "T2", "T3", "T4"], 1, np.random.default_rng(2))[0]
    V, W = vote([P, P, P], ALL)
    assert np.allclose(W, 1 / 3)
    assert np.allclose(V, P)


def test_vote_scrambled_view_weighs_less() -> None:
    Ps = _views(["T8", "T9", "T10", "T11", "T12", "L1"], 3, np.random.default_rng(3))
    Ps[1] = Ps[1][[4, 1, 5, 0, 3, 2]]
    _, W = vote(Ps, ALL)
    assert W.sum() == pytest.approx(1.0)
    assert W[1] < W[0] and W[1] < W[2]


def test_identify_outvotes_two_wrong_views() -> None:
    rng = np.random.default_rng(4)
    names = ["T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5"]
    Ps = _views(names, 10, rng)
    Ps[3] = _views(["T9", "T10", "T11", "T12", "L1", "L2", "L3", "L4"], 1, rng)[0]  # shifted
    Ps[7] = Ps[7][rng.permutation(len(names))]  # scrambled
    labels, conf = identify(Ps, ALL)
    assert labels.tolist() == list(_labels(*names))
    V, _ = vote(Ps, ALL)
    V /= V.sum(axis=1, keepdims=True)
    assert np.allclose(conf, V[np.arange(len(names)), [ALL.index(x) for x in labels]])
    assert np.allclose(conf, V.max(axis=1))


def test_identify_with_valid_mask_drops_rows() -> None:
    rng = np.random.default_rng(5)
    names = ["C2", "C3", "C4", "C5", "C6"]
    Ps = _views(names, 4, rng)
    valid = np.ones((4, 5), bool)
    valid[0, 2] = valid[1, 2] = valid[2, 2] = False
    Ps[:3, 2] = _one_hot(["L5"])[0]  # what the blind views "saw" there is wrong
    V, _ = vote(Ps, ALL, valid=valid)
    assert np.allclose(V[2], Ps[3, 2])  # only view 3 saw row 2
    labels, _ = identify(Ps, ALL, valid=valid)
    assert labels.tolist() == list(_labels(*names))
    # Without the mask, three views carry the wrong row 2 into the vote.
    assert vote(Ps, ALL)[0][2].argmax() == ALL.index(LABELS["L5"])


def test_row_seen_by_no_view_is_filled_by_the_dp() -> None:
    names = ["L1", "L2", "L3", "L4"]
    Ps = _views(names, 3, np.random.default_rng(6))
    valid = np.ones((3, 4), bool)
    valid[:, 1] = False
    V, _ = vote(Ps, ALL, valid=valid)
    assert np.all(V[1] == 0)
    labels, conf = identify(Ps, ALL, valid=valid)
    assert labels.tolist() == list(_labels(*names))
    assert conf[1] == 0.0


def test_scores_scale_with_beta() -> None:
    P = _one_hot(["T1", "T2", "T3"])
    assert sequence_score(P, ALL) == BETA * 3
    assert sequence_score(P, ALL, alpha=0.2, beta=0.5) == 0.5 * 3
    with pytest.raises(VertedgeError):
        sequence_score(P, ALL, beta=0.0)


def test_bad_shapes_raise() -> None:
    with pytest.raises(VertedgeError):
        sequence_loss(np.ones((3, 5)), ALL)
    with pytest.raises(VertedgeError):
        vote([np.ones((3, 26)), np.ones((4, 26))], ALL)
    with pytest.raises(VertedgeError):
        vote(np.ones((2, 3, 26)), ALL, valid=np.ones((2, 4), bool))


def test_a_class_not_allowed_on_a_row_is_no_state_of_it_and_keeps_its_confidence():
    classes = tuple(LABELS[n] for n in ("T12", "L1", "L2", "L3"))
    votes = np.array([[[0.3, 0.7, 0.0, 0.0], [0.0, 0.3, 0.7, 0.0], [0.0, 0.0, 0.3, 0.7]]])
    assert identify(votes, classes)[0].tolist() == [LABELS[n] for n in ("L1", "L2", "L3")]
    allowed = np.ones((3, 4), dtype=bool)
    allowed[1] = [False, True, False, False]  # a count outside the views puts L1 on the middle row
    apart = np.zeros(2, dtype=bool)  # three vertebrae
    labels, conf = identify(votes, classes, same_ok=apart, allowed=allowed)
    assert labels.tolist() == [LABELS[n] for n in ("T12", "L1", "L2")]
    np.testing.assert_allclose(conf, [0.3, 0.3, 0.3])
    # the count needs a class the views leave under the floor on the last row: the floor gives way, not the count
    low = votes.copy()
    low[0, 2] = [0.0, 0.0, 0.005, 0.995]
    labels, conf = identify(low, classes, same_ok=apart, skip_ok=np.zeros(2, bool), floor=0.01, allowed=allowed)
    assert labels.tolist() == [LABELS[n] for n in ("T12", "L1", "L2")]
    np.testing.assert_allclose(conf, [0.3, 0.3, 0.005])
    # a row left no class: no sequence honours it, and the decode reads the views alone
    allowed[1] = False
    assert identify(votes, classes, same_ok=apart, allowed=allowed)[0].tolist() == [LABELS[n] for n in ("L1", "L2", "L3")]
    with pytest.raises(VertedgeError, match="allowed"):
        identify(votes, classes, allowed=allowed[:2])
