"""The checks of notebook 01 (tokenization): ``most_frequent_pair``, ``merge``, ``apply_merges``.

Each check is registered with :func:`~course_utils.check.core._exercise`, which puts in its
place a function that prints one line; the learner calls it as ``check.NAME(NAME)``. Solutions:
``course_utils/solutions/nb01_tokenization.py``.
"""

from __future__ import annotations

from .core import Wrong, _exercise


@_exercise("01", (
    "Count every adjacent pair, zip(ids, ids[1:]), in a dict; then take the pair with the "
    "largest count.",
    "max(counts, key=lambda p: (counts[p], p)) picks the largest count and, among equal "
    "counts, the greatest pair (for byte ids, the pair whose bytes sort last).",
))
def most_frequent_pair(fn):
    """``most_frequent_pair(ids) -> (a, b)``: the pair BPE merges next (ties: the greatest)."""
    from ..bpe import get_pair_counts

    for ids in (list(b"aaabdaaabac"), [1, 2, 3, 1, 2], [7, 7, 7, 1], [9, 8, 2, 1], [4, 4],
                [1, 2, 5, 6]):
        call = f"most_frequent_pair({ids})"
        got = fn(list(ids))
        counts = get_pair_counts(ids)
        expected = max(counts, key=lambda p: (counts[p], p))
        if not (isinstance(got, tuple) and len(got) == 2):
            raise Wrong(f"{call} returned {got!r}; return the pair as a tuple (a, b)")
        if got == expected:
            continue
        if got not in counts:
            raise Wrong(f"{call} returned {got}, which is not a pair of neighbouring ids")
        if counts[got] < counts[expected]:
            raise Wrong(f"{call} returned {got}, seen {_times(counts[got])}, but {expected} "
                        f"is seen {_times(counts[expected])} (overlapping pairs all count)")
        raise Wrong(f"{call}: {got} and {expected} are both seen {_times(counts[got])}; a tie "
                    f"goes to the greater pair (its bytes sort last), {expected}")


def _times(n: int) -> str:
    return {1: "once", 2: "twice"}.get(n, f"{n} times")


@_exercise("01", (
    "Walk through ids with an index i; when ids[i], ids[i + 1] is the pair, append new_id "
    "and jump by 2, otherwise append ids[i] and move by 1.",
    "A while loop, not a for loop, because the step is 1 or 2; test i + 1 < len(ids) "
    "before looking at ids[i + 1], and build a new list instead of changing ids.",
), stand_in="bpe:merge")
def merge(fn):
    """``merge(ids, pair, new_id) -> list``: each occurrence of ``pair`` replaced, left to right."""
    from .. import bpe

    cases = [([1, 2, 3, 1, 2], (1, 2), 9), (list(b"aaabdaaabac"), (97, 97), 256),
             ([7, 7, 7, 1], (7, 7), 9), ([5, 1, 2], (1, 2), 9), ([1, 2, 5], (1, 2), 9),
             ([3], (1, 2), 9), ([], (1, 2), 9), ([2, 1], (1, 2), 9)]
    for ids, pair, new_id in cases:
        call = f"merge({ids}, {pair}, {new_id})"
        given = list(ids)
        got = fn(given, pair, new_id)
        expected = bpe.merge(ids, pair, new_id)
        if given != ids:
            raise Wrong(f"{call} changed the list it was given; build and return a new list")
        if not isinstance(got, list):
            raise Wrong(f"{call} returned a {type(got).__name__}; return a list")
        if got == expected:
            continue
        if got == expected[:-1]:
            raise Wrong(f"{call} returned {got}: the last id is missing; an id at the end "
                        f"that is not part of a pair must be kept")
        if got.count(new_id) > expected.count(new_id):
            raise Wrong(f"{call} returned {got}, expected {expected}: once a pair is merged, "
                        f"both of its ids are used up (7, 7, 7 is one merge and a 7)")
        raise Wrong(f"{call} returned {got}, expected {expected}")


@_exercise("01", (
    "Give every merge its rank (0 for the first learned). In a loop: among the neighbouring "
    "pairs of ids, find the one with the lowest rank and merge it everywhere.",
    "pair = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, float('inf'))); stop when "
    "that pair is not in ranks, otherwise ids = merge(ids, pair, merges[pair]).",
))
def apply_merges(fn):
    """``apply_merges(ids, merges) -> list``: a chunk's bytes encoded by replaying the merges."""
    from .. import bpe

    # a, b, c are 97, 98, 99: "bc" was learned first, so "abc" is a + (bc), never (ab) + c
    abc = {(98, 99): 256, (97, 98): 257, (97, 256): 258}
    known = {"abc": {(257, 99): "merged the leftmost pair that is a merge, but the pair "
                                "learned first (lowest rank) goes first: here (98, 99)"}}
    learned = bpe.train_bpe("the cat sat on the mat; the rat ate the hat " * 4, 300,
                            pattern=None).merges
    cases = [("abc", abc), ("abcab", abc), ("aaabdaaabac", None), ("the cat, the hat", learned),
             ("at", learned), ("x", learned), ("", learned)]
    wiki = bpe.train_bpe("aaabdaaabac", 259, pattern=None).merges  # 3 merges: aa, aaa, aaab
    for text, merges in cases:
        merges = wiki if merges is None else merges
        ids = list(text.encode("utf-8"))
        call = f"apply_merges({ids}, <{len(merges)} merges>)"
        got = fn(list(ids), dict(merges))
        expected = bpe.BPETokenizer(merges, pattern=None).encode(text)
        if not isinstance(got, list):
            raise Wrong(f"{call} returned a {type(got).__name__}; return a list")
        if got == expected:
            continue
        if tuple(got) in known.get(text, {}):
            raise Wrong(f"{call} returned {got}: {known[text][tuple(got)]}")
        if any(pair in merges for pair in zip(got, got[1:])):
            raise Wrong(f"{call} returned {got}, which still has a pair that is a merge: "
                        f"keep merging until no neighbouring pair is in merges")
        raise Wrong(f"{call} returned {got}, expected {expected} (course_utils.bpe)")
