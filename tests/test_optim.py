"""AdamW from scratch against torch.optim.AdamW, step for step."""

import copy

import pytest
import torch

from course_utils.model import GPT, GPTConfig
from course_utils.optim import AdamW

TIGHT = dict(rtol=1e-6, atol=1e-7)


def make_params(seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(6, 5), (5,), (3, 4, 2), (4,)]
    return [torch.randn(s, generator=g).requires_grad_() for s in shapes]


def groups(params, wd=0.1):
    """Matrices with weight decay and their own betas; vectors without decay, other lr."""
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": wd},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, "lr": 3e-3,
             "betas": (0.8, 0.95), "eps": 1e-6}]


@pytest.mark.parametrize("foreach", [False, True])
def test_matches_torch_adamw_step_for_step(foreach):
    ours_p, ref_p = make_params(), make_params()
    kw = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8)
    ours = AdamW(groups(ours_p), **kw)
    ref = torch.optim.AdamW(groups(ref_p), foreach=foreach, **kw)
    g = torch.Generator().manual_seed(1)
    for step in range(12):
        for a, b in zip(ours_p, ref_p):
            grad = torch.randn(a.shape, generator=g) * (step + 1)
            a.grad, b.grad = grad.clone(), grad.clone()
        if step == 5:  # a schedule changes lr between steps
            for opt in (ours, ref):
                for group in opt.param_groups:
                    group["lr"] *= 0.5
        ours.step()
        ref.step()
        for a, b in zip(ours_p, ref_p):
            torch.testing.assert_close(a, b, **TIGHT)
    for a, b in zip(ours_p, ref_p):
        for key in ("step", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(ours.state[a][key], ref.state[b][key], **TIGHT)


def test_matches_torch_on_a_gpt_with_its_optimizer_groups():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=30, block_size=16, n_layer=2, n_head=2, n_embd=16)
    a, b = GPT(cfg), GPT(cfg)
    b.load_state_dict(a.state_dict())
    ours = AdamW(a.optimizer_groups(0.1), lr=3e-3, betas=(0.9, 0.99))
    ref = torch.optim.AdamW(b.optimizer_groups(0.1), lr=3e-3, betas=(0.9, 0.99))
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        x = torch.randint(0, 30, (4, 16), generator=g)
        y = torch.randint(0, 30, (4, 16), generator=g)
        for model, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            model(x, y)[1].backward()
            opt.step()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, **TIGHT, msg=name)


def test_params_without_grad_are_left_alone():
    p, q = make_params()[:2]
    before = q.detach().clone()
    opt = AdamW([p, q], lr=0.1, weight_decay=0.5)
    p.grad = torch.ones_like(p)
    opt.step()
    assert torch.equal(q, before) and q not in opt.state


def test_weight_decay_is_decoupled_from_the_gradient():
    # zero gradient: Adam's step is 0 / (0 + eps) = 0, so only the decay acts:
    # p <- p * (1 - lr * weight_decay)
    start = torch.tensor([4.0, -1.0, 0.5])
    p = start.clone().requires_grad_()
    opt = AdamW([p], lr=0.1, weight_decay=0.5)
    p.grad = torch.zeros(3)
    opt.step()
    torch.testing.assert_close(p.detach(), start * (1 - 0.1 * 0.5))
    # Adam with L2 regularisation (decay added to the gradient, then normalised away on
    # the first step: every weight moves by lr toward 0) ends somewhere else
    r = start.clone().requires_grad_()
    adam = torch.optim.Adam([r], lr=0.1, weight_decay=0.5)
    r.grad = torch.zeros(3)
    adam.step()
    assert not torch.allclose(p, r)


def test_state_dict_interchanges_with_torch():
    """Torch's saved state loads into ours (same names) and the runs go on together."""
    ours_p, ref_p = make_params(), make_params()
    ref = torch.optim.AdamW(groups(ref_p), lr=1e-2)
    g = torch.Generator().manual_seed(3)
    grads = [[torch.randn(p.shape, generator=g) for p in ref_p] for _ in range(6)]
    for step_grads in grads[:3]:
        for p, gr in zip(ref_p, step_grads):
            p.grad = gr.clone()
        ref.step()
    with torch.no_grad():
        for a, b in zip(ours_p, ref_p):
            a.copy_(b)
    ours = AdamW(groups(ours_p), lr=1e-2)
    ours.load_state_dict(copy.deepcopy(ref.state_dict()))  # as if saved to a file
    for step_grads in grads[3:]:
        for a, b, gr in zip(ours_p, ref_p, step_grads):
            a.grad, b.grad = gr.clone(), gr.clone()
        ours.step()
        ref.step()
    for a, b in zip(ours_p, ref_p):
        torch.testing.assert_close(a, b, **TIGHT)


@pytest.mark.parametrize("bad, match", [
    (dict(lr=-1.0), "lr"), (dict(eps=-1e-8), "eps"), (dict(weight_decay=-0.1), "weight_decay"),
    (dict(betas=(0.9, 1.0)), "betas"), (dict(betas=(-0.1, 0.9)), "betas"),
])
def test_bad_settings(bad, match):
    with pytest.raises(ValueError, match=match):
        AdamW(make_params(), **bad)


# ------------------------------------------------------------------ Muon (notebook 16)
def test_muon_matches_torch_muon_step_for_step():
    """Same matrices, same gradients: the same parameters after every step (tall, wide and
    square matrices; weight decay; lr changed by a schedule; with and without Nesterov)."""
    from course_utils.optim import Muon

    for nesterov in (True, False):
        g = torch.Generator().manual_seed(0)
        shapes = [(12, 5), (5, 12), (8, 8)]
        ours_p = [torch.randn(s, generator=g).requires_grad_() for s in shapes]
        ref_p = [p.detach().clone().requires_grad_() for p in ours_p]
        kw = dict(lr=0.02, weight_decay=0.1, momentum=0.9, nesterov=nesterov)
        ours, ref = Muon(ours_p, **kw), torch.optim.Muon(ref_p, **kw)
        for step in range(8):
            for a, b in zip(ours_p, ref_p):
                grad = torch.randn(a.shape, generator=g) * (step + 1)
                a.grad, b.grad = grad.clone(), grad.clone()
            if step == 4:
                for opt in (ours, ref):
                    opt.param_groups[0]["lr"] *= 0.5
            ours.step()
            ref.step()
            for a, b in zip(ours_p, ref_p):  # the same bfloat16 operations: bit for bit
                torch.testing.assert_close(a, b, rtol=0, atol=0)
        for a, b in zip(ours_p, ref_p):
            torch.testing.assert_close(ours.state[a]["momentum_buffer"],
                                       ref.state[b]["momentum_buffer"], rtol=0, atol=0)


def test_newton_schulz_keeps_the_singular_vectors_and_maps_each_singular_value():
    """Against torch.linalg.svd: with G = U S V^T, the result is U S' V^T where each s' is the
    quintic a s + b s^3 + c s^5 applied five times to s / ||G||_F (computed in float64)."""
    from course_utils.optim import NS_COEFFICIENTS, newton_schulz

    a, b, c = NS_COEFFICIENTS
    g = torch.Generator().manual_seed(1)
    for shape in ((16, 6), (6, 16), (10, 10)):
        G = torch.randn(shape, generator=g, dtype=torch.float64)
        G[:, 0] *= 30  # one direction dominates, as in a gradient
        U, S, Vh = torch.linalg.svd(G, full_matrices=False)
        s = S / G.norm()
        for _ in range(5):
            s = a * s + b * s**3 + c * s**5
        out = newton_schulz(G, dtype=torch.float64)
        torch.testing.assert_close(out, U @ torch.diag(s) @ Vh, rtol=1e-9, atol=1e-9)
        sv = torch.linalg.svdvals(out)
        assert sv.min() > 0.6 and sv.max() < 1.25, sv  # near 1, not exactly 1
        # bfloat16 (the default, as torch.optim.Muon): the same up to its rounding
        bf = newton_schulz(G.float())
        assert bf.dtype == torch.bfloat16
        assert (bf.double() - out).norm() / out.norm() < 0.05


def test_muon_groups_of_other_parameters_are_adamw():
    """A group with muon=False is AdamW's update, equal to torch.optim.AdamW's."""
    from course_utils.optim import Muon

    ours_p, ref_p = make_params(), make_params()
    kw = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    ours = Muon([{"params": ours_p, "muon": False, **kw}])
    ref = torch.optim.AdamW(ref_p, **kw)
    g = torch.Generator().manual_seed(2)
    for _ in range(5):
        for a, b in zip(ours_p, ref_p):
            grad = torch.randn(a.shape, generator=g)
            a.grad, b.grad = grad.clone(), grad.clone()
        ours.step()
        ref.step()
    for a, b in zip(ours_p, ref_p):
        torch.testing.assert_close(a, b, **TIGHT)


def test_muon_refuses_what_it_cannot_orthogonalise():
    from course_utils.optim import Muon, newton_schulz

    with pytest.raises(ValueError, match=r"shape \(5,\).*muon=False"):
        Muon(make_params())
    with pytest.raises(ValueError, match="2-D matrix"):
        newton_schulz(torch.ones(3))
    with pytest.raises(ValueError, match="momentum"):
        Muon([torch.ones(2, 2, requires_grad=True)], momentum=1.0)


@pytest.mark.parametrize("tie", [True, False])
def test_make_optimizer_gives_muon_the_blocks_matrices_only(tie):
    from course_utils.config import TrainConfig
    from course_utils.optim import Muon, make_optimizer

    cfg = TrainConfig.from_settings(n_layer=2, n_head=2, n_embd=16, block_size=8,
                                    tie_weights=tie, optimizer="muon", learning_rate=2e-3,
                                    muon_lr=0.05, weight_decay=0.1, mlp="relu2")
    model = GPT(cfg.model_config(30))
    opt = make_optimizer(model, cfg)
    assert isinstance(opt, Muon)
    muon, *adamw = opt.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    expected = {n for n, p in model.named_parameters()
                if n.startswith("transformer.h.") and n.endswith(".weight") and p.dim() == 2}
    assert {names[id(p)] for p in muon["params"]} == expected and len(expected) == 8
    rest = {names[id(p)] for g in adamw for p in g["params"]}
    assert rest == set(names.values()) - expected
    assert ("lm_head.weight" in rest) == (not tie)  # an untied output layer is AdamW's
    assert muon["muon"] and muon["lr_ratio"] == pytest.approx(0.05 / 2e-3)
    assert all(not g["muon"] and g["lr_ratio"] == 1.0 for g in adamw)
    assert make_optimizer(model, TrainConfig(), "cpu").__class__ is torch.optim.AdamW
