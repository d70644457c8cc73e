"""Solutions to the exercises of notebook 16 (speedrun): the Newton-Schulz orthogonalisation
and the momentum of Muon (Keller Jordan et al., 2024), and the verdict of a change measured
with several seeds."""


def newton_schulz(G, steps=5, coefficients=(3.4445, -4.7750, 2.0315), eps=1e-7):
    """An approximately orthogonal matrix with the singular vectors of ``G`` ``(m, n)``:
    normalise by the Frobenius norm, then ``steps`` times ``X <- a X + (b A + c A @ A) X``
    with ``A = X X^T`` (on the wide orientation, so that ``A`` is the smaller matrix)."""
    a, b, c = coefficients
    X = G.float()
    tall = X.shape[0] > X.shape[1]
    if tall:
        X = X.T
    X = X / (X.norm() + eps)
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if tall else X


def muon_momentum(grad, buf, momentum=0.95, nesterov=True):
    """Muon's momentum, as ``torch.optim.Muon``: the running mean ``buf`` of the gradients
    moves toward ``grad`` by ``1 - momentum``; the update looks one step ahead (Nesterov) or
    is the running mean itself. Returns ``(update, new_buf)``."""
    new_buf = momentum * buf + (1 - momentum) * grad
    update = (1 - momentum) * grad + momentum * new_buf if nesterov else new_buf
    return update, new_buf


def verdict(base, new):
    """``"better"`` or ``"worse"`` when the mean loss of ``new`` differs from the mean of
    ``base`` by more than the seed spread (the larger range of the two), else "no measurable
    difference". Lower loss is better."""
    spread = max(max(base) - min(base), max(new) - min(new))
    change = sum(new) / len(new) - sum(base) / len(base)
    if change < -spread:
        return "better"
    if change > spread:
        return "worse"
    return "no measurable difference"
