"""Solutions to the exercises of notebook 01 (tokenization): the steps of byte pair encoding.

Sennrich et al. (2016), "Neural Machine Translation of Rare Words with Subword Units"; GPT-2's
byte-level version: Radford et al. (2019).
"""


def most_frequent_pair(ids):
    """The pair BPE merges next: the most frequent adjacent pair of ``ids`` (a list of at
    least two ints), ties going to the greatest pair (for byte ids: the pair whose bytes sort
    last, the course's tie rule). Returns a tuple ``(a, b)``."""
    counts = {}
    for pair in zip(ids, ids[1:]):  # overlapping pairs all count: [7, 7, 7] has (7, 7) twice
        counts[pair] = counts.get(pair, 0) + 1
    return max(counts, key=lambda pair: (counts[pair], pair))


def merge(ids, pair, new_id):
    """A new list in which every occurrence of ``pair`` in ``ids``, scanning left to right, is
    replaced by ``new_id``: ``merge([7, 7, 7, 1], (7, 7), 9) == [9, 7, 1]``."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2  # both ids of the pair are used up
        else:
            out.append(ids[i])
            i += 1
    return out


def apply_merges(ids, merges):
    """Encode one chunk: ``ids`` are its bytes, ``merges`` is ``{(a, b): new_id}`` in the order
    learned. Repeatedly merge the adjacent pair learned earliest (lowest rank) until no
    adjacent pair is a merge. Uses ``merge`` from the exercise above."""
    ranks = {pair: rank for rank, pair in enumerate(merges)}
    while len(ids) >= 2:
        pair = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, float("inf")))
        if pair not in ranks:  # no adjacent pair is a merge any more
            break
        ids = merge(ids, pair, merges[pair])
    return ids
