"""VerSe vertebra numbering: 1-7 C1-C7, 8-19 T1-T12, 20-24 L1-L5, 25 L6, 28 T13."""

from __future__ import annotations

NAMES: dict[int, str] = {
    **{i: f"C{i}" for i in range(1, 8)},
    **{i + 7: f"T{i}" for i in range(1, 13)},
    **{i + 19: f"L{i}" for i in range(1, 7)},
    28: "T13",
}
LABELS: dict[str, int] = {name: label for label, name in NAMES.items()}

# Cranio-caudal order of every label a spine can hold (T13 after T12, L6 after L5).
SPINE_ORDER: tuple[int, ...] = (*range(1, 20), 28, *range(20, 26))
OPTIONAL: frozenset[int] = frozenset({28, 25})  # T13 and L6: a spine may or may not have them


def successors(label: int) -> frozenset[int]:
    """Anatomical "next" labels of a VerSe label: the one below it, and the one after that where the
    one below is an optional variant (both T13 and L1 follow T12, both L6 and nothing after L5)."""
    pos = SPINE_ORDER.index(int(label))
    nxt = SPINE_ORDER[pos + 1 : pos + 2]
    if nxt and nxt[0] in OPTIONAL:
        nxt = SPINE_ORDER[pos + 1 : pos + 3]
    return frozenset(nxt)


def name(label: int) -> str:
    """The anatomical name ("C1" ... "L6", "T13") of a VerSe label."""
    return NAMES[int(label)]


def region(label: int) -> str:
    """"cervical", "thoracic" or "lumbar" for a VerSe label."""
    label = int(label)
    if label <= 7:
        return "cervical"
    if label <= 19 or label == 28:
        return "thoracic"
    return "lumbar"
