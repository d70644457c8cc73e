"""Solutions to the exercises of notebook 10 (TinyStories): the token stream with story
separators, and the training FLOPs per token (Kaplan et al., 2020; PaLM, appendix B)."""


def join_stories(stories, encode, eot_id):
    """One flat list of ids: each story encoded with ``encode``, followed by ``eot_id``."""
    ids = []
    for story in stories:
        ids.extend(encode(story))
        ids.append(eot_id)  # the separator marks where a story ends
    return ids


def train_flops_per_token(n_params, n_layer, n_embd, seq_len):
    """FLOPs to train on one token: ``6 N`` for the weights (forward 2N, backward 4N) plus
    ``12 n_layer n_embd seq_len`` for the attention products ``q k^T`` and ``att v``."""
    return 6 * n_params + 12 * n_layer * n_embd * seq_len
