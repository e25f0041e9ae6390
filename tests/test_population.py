"""Population training: a member ends where it would have ended alone; stopped members are frozen
and dropped; the dataset is never copied per member.

Tolerance (documented in docs/population.md): weights agree to ``|a - b| <= 2e-5 + 1e-5 |b|``
and losses to ``1e-5``. Batched kernels sum in a different order than K = 1 kernels and a
mixed-rate population steps with ``lr = 1`` then scales each member's update, so bits differ at
float32 rounding (~1e-7 relative per step); a few epochs keep that far below these bounds, while
a wrong seed, shuffle, mask or rate moves weights by ~1e-2.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import fitwell
from fitwell import models
from fitwell.models import Architecture, PopulationMLP
from fitwell.training import Callback, LoopSettings, MemberSettings, Trainer
from fitwell.training.optim import PopulationOptimizer

WEIGHT_ATOL = 2e-5
WEIGHT_RTOL = 1e-5
LOSS_ATOL = 1e-5

ARCH = Architecture(n_inputs=6, hidden=(16, 12), n_outputs=3)

# Members differ in every per-member setting at once.
MEMBERS = [
    MemberSettings(seed=1, lr=1e-2, l1=0.0, l2=0.0, dropout=(0.0, 0.0)),
    MemberSettings(seed=2, lr=3e-3, l1=1e-3, l2=0.0, dropout=(0.2, 0.0)),
    MemberSettings(seed=3, lr=2e-2, l1=0.0, l2=1e-3, dropout=(0.1, 0.3)),
    MemberSettings(seed=4, lr=5e-3, l1=5e-4, l2=2e-3, dropout=(0.0, 0.5)),
]


def _data(n: int = 240, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(np.int64) + (x[:, 3] > 1).astype(np.int64)
    cut = int(0.75 * n)
    return {"x_train": x[:cut], "y_train": y[:cut], "x_val": x[cut:], "y_val": y[cut:]}


def _trainer(
    members: list[MemberSettings],
    *,
    optimizer: str = "adam",
    epochs: int = 6,
    patience: int = 0,
    callbacks: tuple[Callback, ...] = (),
    batch_norm: bool = False,
) -> Trainer:
    arch = Architecture(6, ARCH.hidden, 3, batch_norm=batch_norm)
    loop = LoopSettings(optimizer=optimizer, batch_size=32, max_epochs=epochs, patience=patience)
    return Trainer(
        arch,
        members,
        loop,
        task="classification",
        device=torch.device("cpu"),
        callbacks=callbacks,
        **_data(),
    )


def _assert_same_member(together: Any, alone: Any) -> None:
    assert together.epochs_run == alone.epochs_run
    assert together.best_epoch == alone.best_epoch
    assert together.val_loss == pytest.approx(alone.val_loss, abs=LOSS_ATOL)
    assert together.train_loss == pytest.approx(alone.train_loss, abs=LOSS_ATOL)
    assert together.state.keys() == alone.state.keys()
    for name, tensor in together.state.items():
        torch.testing.assert_close(tensor, alone.state[name], atol=WEIGHT_ATOL, rtol=WEIGHT_RTOL)


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_member_in_population_matches_member_trained_alone(optimizer: str) -> None:
    together = _trainer(MEMBERS, optimizer=optimizer).fit()
    for member, settings in enumerate(MEMBERS):
        alone = _trainer([settings], optimizer=optimizer).fit()
        _assert_same_member(together.members[member], alone.members[0])


def test_members_with_different_settings_end_differently() -> None:
    # Guards the equivalence test against passing trivially (e.g. settings ignored).
    fit = _trainer(MEMBERS).fit()
    w = [fit.members[m].state["weights.0"] for m in range(len(MEMBERS))]
    assert all(float((w[0] - other).abs().max()) > 1e-2 for other in w[1:])


def test_batch_norm_member_matches_alone() -> None:
    # SGD: a hidden bias in front of batch norm has a gradient that is zero up to rounding, and
    # Adam divides that rounding noise by its own size (steps of +-lr), so Adam + batch norm only
    # matches to ~1e-3 in loss. That caveat is documented; the batched statistics are tested here.
    together = _trainer(MEMBERS[:2], batch_norm=True, epochs=4, optimizer="sgd").fit()
    for member, settings in enumerate(MEMBERS[:2]):
        alone = _trainer([settings], batch_norm=True, epochs=4, optimizer="sgd").fit()
        _assert_same_member(together.members[member], alone.members[0])


class _StopAt(Callback):
    """Stops one member after a given epoch and records the batched model's size each epoch."""

    def __init__(self, member: int, epoch: int) -> None:
        self.member, self.epoch = member, epoch
        self.sizes: list[int] = []
        self.kept: list[list[int]] = []

    def on_epoch_begin(self, trainer: Trainer, **kwargs: Any) -> None:
        self.sizes.append(int(trainer.model.weights[0].shape[0]))

    def on_epoch_end(self, trainer: Trainer, **kwargs: Any) -> None:
        if trainer.epoch == self.epoch:
            trainer.stop_member(self.member, "stopped by test")

    def on_members_removed(self, trainer: Trainer, **kwargs: Any) -> None:
        self.kept.append(list(kwargs["kept"]))


def test_stopped_member_is_frozen_removed_and_others_unaffected() -> None:
    stopper = _StopAt(member=1, epoch=2)
    fit = _trainer(MEMBERS[:3], epochs=5, callbacks=(stopper,)).fit()
    # The stopped member no longer costs anything: the batched model shrinks.
    assert stopper.sizes == [3, 3, 2, 2, 2]
    assert stopper.kept == [[0, 2]]
    assert fit.members[1].epochs_run == 2
    assert fit.members[1].stop_reason == "stopped by test"
    # Frozen: it equals that member trained alone for exactly 2 epochs ...
    _assert_same_member(fit.members[1], _trainer([MEMBERS[1]], epochs=2).fit().members[0])
    # ... and the members around it (positions shifted) equal their own solo runs.
    for member in (0, 2):
        _assert_same_member(
            fit.members[member], _trainer([MEMBERS[member]], epochs=5).fit().members[0]
        )


def test_per_member_early_stopping_matches_alone() -> None:
    # A rate far too high stalls one member early; the others keep improving. (A rate so high
    # that training turns chaotic, e.g. 1.5, amplifies float32 rounding past any tolerance.)
    members = [
        MemberSettings(seed=5, lr=3e-3),
        MemberSettings(seed=6, lr=0.1),
        MemberSettings(seed=7, lr=1e-2, l2=1e-3),
    ]
    fit = _trainer(members, epochs=10, patience=2).fit()
    runs = [_trainer([m], epochs=10, patience=2).fit().members[0] for m in members]
    assert len({r.epochs_run for r in runs}) > 1, "test needs members that stop at different epochs"
    for member, alone in enumerate(runs):
        _assert_same_member(fit.members[member], alone)
        assert fit.members[member].stop_reason == alone.stop_reason


def test_training_never_materialises_per_member_copies_of_the_data() -> None:
    k, batch = 8, 32
    members = [MemberSettings(seed=s, lr=1e-3, dropout=(0.1, 0.1)) for s in range(k)]
    trainer = _trainer(members, epochs=2)
    n_train, n_features = trainer.x_train.shape
    shapes: list[tuple[int, ...]] = []
    trainer.model.register_forward_pre_hook(lambda _m, args: shapes.append(tuple(args[0].shape)))
    data_ptr = trainer.x_train.data_ptr()
    trainer.fit()
    assert trainer.x_train.data_ptr() == data_ptr
    # Training reads one mini-batch per member, [K, <= batch, F]; evaluation broadcasts the
    # shared rows [N, F] to every member. Nothing of size K x N x F ever enters the model.
    largest = max(int(np.prod(s)) for s in shapes)
    assert largest <= max(k * batch * n_features, n_train * n_features)
    assert any(len(s) == 3 and s[0] == k and s[1] == batch for s in shapes)
    assert any(len(s) == 2 and s[0] == n_train for s in shapes)


def test_train_population_sweep_picks_best_and_reports_every_member() -> None:
    configs = [
        {
            "dataset": "iris",
            "hidden": (8,),
            "lr": lr,
            "l2": l2,
            "restarts": 2,
            "max_epochs": 5,
            "seed": 3,
            "device": "cpu",
        }
        for lr in (1e-3, 3e-2)
        for l2 in (0.0, 1e-3)
    ]
    run = fitwell.train_population(configs)
    population = run.metrics["population"]
    assert len(population) == 8
    assert [p["config_index"] for p in population] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [p["seed"] for p in population] == [3, 4] * 4
    best = min(population, key=lambda p: p["val_loss"])
    assert run.metrics["restarts"]["best"] == best["member"]
    assert run.metrics["val"]["loss"] == pytest.approx(best["val_loss"])


def test_train_population_rejects_members_that_differ_in_shape() -> None:
    with pytest.raises(fitwell.InputError, match="differs in `hidden`"):
        fitwell.train_population(
            [{"dataset": "iris", "hidden": (8,)}, {"dataset": "iris", "hidden": (16,)}]
        )


def test_l2_gradient_added_by_the_optimizer_equals_autograd_of_the_penalty() -> None:
    trainer = _trainer(MEMBERS)
    penalty = trainer._l2_penalty()
    assert penalty is not None
    penalty.backward()
    expected = [w.grad.clone() for w in trainer.model.weights]
    for w in trainer.model.weights:
        w.grad = torch.zeros_like(w)
    trainer.optimizer.add_l2_gradient()
    for w, grad in zip(trainer.model.weights, expected, strict=True):
        torch.testing.assert_close(w.grad, grad)


def test_set_lrs_switches_between_uniform_and_per_member_steps() -> None:
    w = torch.nn.Parameter(torch.ones(2, 3, 4))
    opt = PopulationOptimizer(
        [w], [w], kind="sgd", lrs=torch.tensor([0.1, 0.1]), l1s=torch.zeros(2), momentum=0.0
    )
    opt.set_lrs(torch.tensor([0.1, 0.05]))
    w.grad = torch.ones_like(w)
    opt.step()
    torch.testing.assert_close(w[0], torch.full((3, 4), 0.9))
    torch.testing.assert_close(w[1], torch.full((3, 4), 0.95))
    opt.set_lrs(torch.tensor([0.2, 0.2]))
    assert opt.uniform_lr
    opt.step()
    torch.testing.assert_close(w[1], torch.full((3, 4), 0.75))


def _bn_model(k: int) -> PopulationMLP:
    model = PopulationMLP(Architecture(6, (16, 12), 3, batch_norm=True), k)
    model.initialize(list(range(k)), init="auto", init_scale=1.0, bias_init=0.0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in range(2):  # non-trivial running statistics and affine parameters
            getattr(model, f"bn_mean_{layer}").normal_(generator=gen)
            getattr(model, f"bn_var_{layer}").uniform_(0.5, 2.0, generator=gen)
            model.bn_weights[layer].uniform_(0.5, 1.5, generator=gen)
            model.bn_biases[layer].normal_(generator=gen)
    return model.eval()


def test_member_by_member_evaluation_matches_the_batched_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Wide populations on the CPU evaluate shared rows one member at a time (cache-resident);
    # the outputs must be the batched ones, batch-norm slices included.
    model = _bn_model(4)
    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(1))
    batched = model(x)
    monkeypatch.setattr(models, "_MEMBER_LOOP_MACS", 0)
    monkeypatch.setattr(models, "_MEMBER_LOOP_WIDTH", 0)
    calls: list[int] = []
    original = PopulationMLP.forward

    def counting_forward(self: PopulationMLP, *args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PopulationMLP, "forward", counting_forward)
    monkeypatch.setattr(models, "eval_chunk_rows", lambda arch, n_members, cache=True: 8)
    looped = model.predict_chunks(x)
    assert not calls  # the member loop ran, not the batched forward
    torch.testing.assert_close(looped, batched, atol=1e-5, rtol=1e-5)
    # Pre-activation hooks see the batched [K, rows, H] form of the first hooked rows only.
    seen: list[tuple[int, ...]] = []
    parts = [
        part
        for part, _ in model.shared_chunks(
            x, on_preactivation=lambda layer, pre: seen.append(tuple(pre.shape)), hooked_rows=20
        )
    ]
    assert sum(shape[1] for shape in seen[::2]) == 20
    assert {shape[0] for shape in seen} == {4} and {shape[2] for shape in seen} == {16, 12}
    assert len(parts) == 7 and parts[0].start == 0 and parts[-1].stop == 50
    assert all(a.stop == b.start for a, b in zip(parts[:-1], parts[1:], strict=True))


def test_member_by_member_evaluation_keeps_a_member_equal_to_itself_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(models, "_MEMBER_LOOP_MACS", 0)
    monkeypatch.setattr(models, "_MEMBER_LOOP_WIDTH", 0)
    together = _trainer(MEMBERS).fit()
    for member, settings in enumerate(MEMBERS):
        alone = _trainer([settings]).fit()
        _assert_same_member(together.members[member], alone.members[0])


def test_evaluation_chunks_fit_a_cpu_cache_and_stay_memory_bounded() -> None:
    wide = Architecture(64, (256, 256), 10)
    assert models.eval_chunk_rows(wide, 1) == 512  # 2**17 activations of the widest layer
    assert models.eval_chunk_rows(wide, 1, cache=False) == 8192  # accelerators: large batches
    huge = Architecture(64, (512, 512), 10)
    assert models.eval_chunk_rows(huge, 64) == 64  # at least 64 rows for efficient products
    assert models.eval_chunk_rows(huge, 64, cache=False) == 512  # 2**24 activations at most
    assert models.eval_chunk_rows(Architecture(4, (4096,), 2), 4096) == 1


def test_narrow_output_layer_equals_the_plain_product_and_its_gradients() -> None:
    # Thin output layers run transposed with a hand-written backward: same values, same
    # gradients (in the parameters' own layout) as autograd of the plain batched product.
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(3, 5, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 7, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 1, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(models.narrow_linear, (h, w, b))
    upstream = torch.randn(3, 5, 2, generator=gen, dtype=torch.float64)
    fast = models.narrow_linear(h, w, b)
    grads_fast = torch.autograd.grad(fast, (h, w, b), upstream)
    plain = torch.baddbmm(b, h, w)
    grads_plain = torch.autograd.grad(plain, (h, w, b), upstream)
    torch.testing.assert_close(fast, plain)
    for got, want in zip(grads_fast, grads_plain, strict=True):
        torch.testing.assert_close(got, want)
        assert got.is_contiguous()
    with torch.no_grad():
        torch.testing.assert_close(models.narrow_linear(h, w, b), plain)


def test_population_forward_uses_the_narrow_layout_only_for_thin_layers_of_populations(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[int, ...]] = []
    original = models.narrow_linear

    def counting(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(w.shape))
        return original(h, w, b)

    monkeypatch.setattr(models, "narrow_linear", counting)
    x = torch.randn(4, 10, 6)
    PopulationMLP(ARCH, 4)(x)
    assert calls == [(4, 16, 12), (4, 12, 3)]  # layers under 16 outputs; the 16-wide one is not
    calls.clear()
    PopulationMLP(ARCH, 1)(x[:1])
    assert not calls  # one member keeps the plain product


def test_fused_output_layer_and_cross_entropy_equal_the_plain_loss_and_its_gradients() -> None:
    # Populations of classifiers fuse the thin output layer with the per-row cross-entropy:
    # same losses and gradients (float64 gradcheck) as F.cross_entropy of the plain product.
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(3, 5, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 7, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 1, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 4, (3, 5), generator=gen)
    assert torch.autograd.gradcheck(
        lambda h, w, b: models.narrow_cross_entropy(h, w, b, targets), (h, w, b)
    )
    upstream = torch.rand(3, 5, generator=gen, dtype=torch.float64)
    fused = models.narrow_cross_entropy(h, w, b, targets)
    plain = torch.nn.functional.cross_entropy(
        torch.baddbmm(b, h, w).reshape(15, 4), targets.reshape(15), reduction="none"
    ).view(3, 5)
    torch.testing.assert_close(fused, plain)
    grads_fused = torch.autograd.grad(fused, (h, w, b), upstream)
    grads_plain = torch.autograd.grad(plain, (h, w, b), upstream)
    for got, want in zip(grads_fused, grads_plain, strict=True):
        torch.testing.assert_close(got, want)
        assert got.is_contiguous()


@pytest.mark.parametrize("n_members", [1, 4])
def test_forward_with_targets_is_the_per_row_cross_entropy_of_the_outputs(n_members: int) -> None:
    model = PopulationMLP(ARCH, n_members)
    model.initialize(list(range(n_members)), init="auto", init_scale=1.0, bias_init=0.0)
    x = torch.randn(n_members, 10, ARCH.n_inputs)
    targets = torch.randint(0, ARCH.n_outputs, (n_members, 10))
    assert model.fuses_cross_entropy == (n_members > 1)
    rows = model(x, targets=targets)
    logits = model(x)
    want = torch.nn.functional.cross_entropy(
        logits.reshape(-1, ARCH.n_outputs), targets.reshape(-1), reduction="none"
    ).view(n_members, 10)
    assert rows.shape == (n_members, 10)
    torch.testing.assert_close(rows, want)
    rows.sum().backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.weights)


def test_population_training_steps_use_the_fused_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, ...]] = []
    original = models.narrow_cross_entropy

    def counting(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> Any:
        calls.append(tuple(t.shape))
        return original(h, w, b, t)

    monkeypatch.setattr(models, "narrow_cross_entropy", counting)
    _trainer(MEMBERS[:2], epochs=1).fit()
    assert calls and all(shape[0] == 2 for shape in calls)  # one call per step, both members
    calls.clear()
    _trainer(MEMBERS[:1], epochs=1).fit()
    assert not calls  # one member keeps PyTorch's fused mean cross-entropy


def test_column_major_tables_are_stored_row_major_and_train_alike() -> None:
    # Steps gather rows: a Fortran-ordered array (what pandas often hands over) is copied to
    # row-major storage once, and training ends exactly where the C-ordered array ends.
    data = _data()
    fortran = {k: np.asfortranarray(v) for k, v in data.items()}
    assert not fortran["x_train"].flags["C_CONTIGUOUS"]
    arch = Architecture(6, ARCH.hidden, 3)
    loop = LoopSettings(batch_size=32, max_epochs=2, patience=0)
    fits = []
    for arrays in (data, fortran):
        trainer = Trainer(
            arch, MEMBERS[:2], loop, task="classification", device=torch.device("cpu"), **arrays
        )
        assert trainer.x_train.is_contiguous() and trainer.x_val.is_contiguous()
        fits.append(trainer.fit())
    for a, b in zip(fits[0].members, fits[1].members, strict=True):
        for name in a.state:
            assert torch.equal(a.state[name], b.state[name])


def test_evaluation_scores_class_major_and_row_major_logits_alike() -> None:
    # A population's thin output layer hands evaluation class-major logits (a transposed view);
    # loss and accuracy equal those of the same logits stored row-major, ties going to the first
    # maximal class as argmax does (rows 0-3: every logit equal, as in a dead network).
    from fitwell.metrics import SplitAccumulator

    gen = torch.Generator().manual_seed(0)
    by_class = torch.randn(3, 4, 50, generator=gen)  # [K, C, rows], rows contiguous
    by_class[:, :, :4] = 0.5
    by_class[1, 2, 10] = by_class[1, 3, 10] = 9.0  # a tie between classes 2 and 3
    targets = torch.randint(0, 4, (50,), generator=gen)
    targets[:4] = torch.tensor([0, 1, 2, 3])
    targets[10] = 3
    class_major = by_class.transpose(1, 2)
    row_major = class_major.contiguous()
    assert class_major.stride(-1) != 1 and row_major.stride(-1) == 1
    results = []
    for logits in (class_major, row_major):
        acc = SplitAccumulator("classification", 3, torch.device("cpu"))
        acc.add(logits[:, :30], targets[:30])
        acc.add(logits[:, 30:], targets[30:])
        results.append(acc.result())
    want_loss = (
        torch.nn.functional.cross_entropy(
            row_major.reshape(150, 4), targets.repeat(3), reduction="none"
        )
        .view(3, 50)
        .mean(dim=1)
    )
    want_score = (row_major.argmax(dim=-1) == targets).double().mean(dim=1)
    for loss, score in results:
        np.testing.assert_allclose(loss, want_loss.numpy(), rtol=1e-6)
        np.testing.assert_array_equal(score, want_score.numpy())
    for target, right in ((2, 1.0), (3, 0.0)):  # the tie at row 10 goes to class 2
        acc = SplitAccumulator("classification", 1, torch.device("cpu"))
        acc.add(class_major[1:2, 10:11], torch.tensor([target]))
        assert acc.result()[1][0] == right
