"""The one-epoch recipe's levers: the search allocation, the forward-order refit, the guard, the schedule."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from synthetic import brightness_classes, random_images

from achroma.costs import count_macs
from achroma.fold import fold_to_gray
from achroma.models import create_model
from achroma.pipeline import Budget, CompressConfig, Compressor
from achroma.pipeline.budget import width_cost
from achroma.pipeline.search import search_widths
from achroma.repair import RepairConfig, RepairJob, repair_with_guard
from achroma.repair.refit import RIDGE_GRID, ls_refit
from achroma.surgery.groups import ChannelGraph
from achroma.training import TrainConfig, lr_at


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _one_channel(gray: nn.Module, groups, by: str) -> float:
    """The cost of one channel in every group: the slack a plan rounded to whole channels may leave."""
    cost = width_cost(gray, ChannelGraph(gray, torch.zeros(1, 1, 32, 32)).groups(), (1, 32, 32))
    return sum(cost.full[by] - cost.cost({g: cost.channels[g] - 1})[by] for g in groups)


@pytest.fixture(scope="module")
def searched():
    import achroma.pipeline.search as search

    saved, search.MAX_ROUNDS = search.MAX_ROUNDS, 3  # a few rounds: the invariants, not the optimum
    torch.manual_seed(0)
    color = create_model("resnet-cifar-20").eval()
    calib = random_images(100, seed=3)
    budget = Budget(macs=0.5, params=0.5, allocation="search")
    fit = lambda: Compressor(CompressConfig(seed=0, progress=False), budget).fit(color, "cifar", calib)  # noqa: E731
    try:
        return fit(), fit()
    finally:
        search.MAX_ROUNDS = saved


def test_the_search_meets_both_budgets_within_one_channel_a_group(searched, one_thread):
    comp, _ = searched
    folded, merged = comp.folded_, comp.model_
    groups = comp.plan_.layers
    assert count_macs(merged, (1, 32, 32)) <= 0.5 * count_macs(folded, (1, 32, 32)) + _one_channel(folded, groups, "macs")
    assert _params(merged) <= 0.5 * _params(folded) + _one_channel(folded, groups, "params")
    log = comp.plan_.search
    assert log["evaluations"] > 0 and all(m["damage"] < log["start_damage"] for m in log["moves"])


def test_the_search_is_deterministic_for_a_seed(searched, one_thread):
    a, b = searched
    assert a.plan_.widths == b.plan_.widths and a.plan_.search["moves"] == b.plan_.search["moves"]
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(a.model_(x), b.model_(x))


def _two_groups():
    from achroma.pipeline.budget import WidthCost, _Dim, _Term

    terms = lambda v: [_Term(v, (_Dim(16, {g: 16}),)) for g in "ab"]  # noqa: E731
    return WidthCost({"a": 16, "b": 16}, params=terms(1.0), macs=terms(10.0))


def test_the_search_moves_channels_to_where_the_measured_damage_is_larger():
    """Two groups of equal cost, b ten times as sensitive: from the uniform plan, b gets channels back."""
    cost = _two_groups()
    damage = lambda w: (16 - w["a"]) ** 2 + 10 * (16 - w["b"]) ** 2  # noqa: E731
    start = {"a": 8, "b": 8}
    widths = search_widths(cost, {"macs": 0.5}, damage, start)
    assert widths["b"] > 8 > widths["a"] and widths["a"] + widths["b"] <= 16
    assert damage(widths) < damage(start)
    assert search_widths(cost, {"macs": 0.5}, damage, start) == widths  # deterministic


def test_the_search_spends_unused_budget_and_never_leaves_it():
    cost = _two_groups()
    damage = lambda w: (16 - w["a"]) + (16 - w["b"])  # noqa: E731
    widths = search_widths(cost, {"macs": 0.75, "params": 0.75}, damage, {"a": 8, "b": 8})
    assert widths["a"] + widths["b"] == 24  # grown from 50% to the 75% allowed, no further


def test_the_joint_damage_is_zero_at_full_width_and_grows_as_channels_go(one_thread):
    from achroma.pipeline.search import JointDamage
    from achroma.surgery.groups import channel_groups

    torch.manual_seed(0)
    gray = fold_to_gray(create_model("resnet-cifar-20").eval(), "cifar")[0].eval()
    groups = channel_groups(gray, torch.zeros(1, 1, 32, 32))
    from achroma.repair.bn import bn_recalibrate

    images = torch.rand(64, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    bn_recalibrate(gray, [(images[:32], None)])  # the statistics the damage re-estimates: the reference's own
    damage = JointDamage(gray, groups, images)
    full = {g.root: g.channels for g in groups if not g.refused}
    root = "layer2.0.conv2"  # the second stage's residual stream
    assert damage(full) == pytest.approx(0.0, abs=1e-5)
    assert 0 < damage({**full, root: 24}) < damage({**full, root: 8})


def test_the_forward_order_refit_with_nothing_merged_returns_the_model_unchanged(one_thread):
    torch.manual_seed(0)
    gray = fold_to_gray(create_model("resnet-cifar-20").eval(), "cifar")[0].eval()
    model = fold_to_gray(create_model("resnet-cifar-20").eval(), "cifar")[0].eval()
    model.load_state_dict(gray.state_dict())
    images = [(torch.rand(64, 1, 32, 32, generator=torch.Generator().manual_seed(i)), torch.zeros(64)) for i in range(4)]
    report = ls_refit(model, gray, images)  # no merge: no layer reads changed channels
    assert report.layers == []
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)][:6]
    report = ls_refit(model, gray, images, layers=convs, ridge=1e-8)  # forced: each solves to its own weights
    x = torch.rand(8, 1, 32, 32)
    with torch.no_grad():
        before, after = gray(x), model(x)
    assert max(report.error_after) < 1e-3
    assert float((after - before).norm() / before.norm()) < 1e-3


class _Shift(nn.Module):
    """A model whose only parameter decides the brightness threshold: easy to break, easy to check."""

    def __init__(self, bias: float):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        self.fc = nn.Linear(1, 2)
        with torch.no_grad():
            self.conv.weight.fill_(1.0), self.conv.bias.fill_(0.0)
            self.fc.weight.copy_(torch.tensor([[-1.0], [1.0]])), self.fc.bias.copy_(torch.tensor([bias, -bias]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)))


def test_the_guard_keeps_the_best_stage_and_reports_the_step_that_made_it_worse(one_thread):
    from achroma.repair import register_repair
    from achroma.repair.base import Repair, _REGISTRY

    @register_repair
    class Break(Repair):  # a step that destroys the model: the collapse the guard exists for
        name, help, trained = "test-break", "sets the threshold where no image is classified right", True

        def __call__(self, model: nn.Module, job: RepairJob) -> nn.Module:
            with torch.no_grad():
                model.fc.bias.copy_(torch.tensor([100.0, -100.0]))
            return model

    try:
        data = brightness_classes(40, size=8)
        job = RepairJob(data, RepairConfig(), 0, "cpu", "gray", "none", validation=data)
        good = _Shift(bias=0.4)  # threshold between the two brightness levels: every image right
        outcome = repair_with_guard(good, "test-break", job)
        assert outcome.kept == "start" and outcome.worse_steps == ["test-break"]
        assert [s for s, _ in outcome.stages] == ["start", "test-break"]
        assert outcome.stages[0][1] == 1.0 and outcome.stages[1][1] == 0.5
        with torch.no_grad():
            x = torch.rand(3, 1, 8, 8)
            assert torch.equal(outcome.model(x), good(x))
        unguarded = repair_with_guard(good, "test-break", RepairJob(data, RepairConfig(), 0, "cpu", "gray", "none"))
        assert unguarded.kept == "test-break" and unguarded.stages == []
    finally:
        _REGISTRY.pop("test-break", None)


def test_the_guarded_compress_report_names_the_kept_stage(tmp_path, one_thread):
    from achroma.pipeline import compress

    torch.manual_seed(0)
    color = create_model("resnet-cifar-20").eval()
    result = compress(color, "cifar", random_images(60, seed=1), random_images(20, seed=2, split="test"),
                      CompressConfig(layers="first:1", keep=0.5, repair="bn-train", guard=0.2, seed=0,
                                     progress=False))
    guard = result.settings["guard"]
    assert set(guard) == {"merged+bn-train", "folded+bn-train"}
    entry = guard["merged+bn-train"]
    assert entry["images"] == 10 and [s["stage"] for s in entry["stages"]] == ["start", "bn-train"]
    assert entry["kept"] in ("start", "bn-train")
    from achroma.report import build_report, render_markdown

    assert "## Guard" in render_markdown(build_report(result))


def test_the_onecycle_schedule_rises_then_anneals_to_zero():
    cfg = TrainConfig(epochs=1, lr=0.1, schedule="onecycle")
    assert lr_at(cfg, 0) == pytest.approx(0.004)
    assert lr_at(cfg, 0.25) == pytest.approx(0.1) and lr_at(cfg, 1.0) < 1e-12
    assert lr_at(cfg, 0.1) < lr_at(cfg, 0.2) and lr_at(cfg, 0.5) > lr_at(cfg, 0.9)


@pytest.mark.parametrize("field,value", [("distill_teacher", "teacher"), ("distill_schedule", "step"),
                                         ("distill_loss", "l1")])
def test_the_repair_config_refuses_unknown_choices(field, value):
    with pytest.raises(ValueError, match=field):
        RepairConfig(**{field: value})


def _grams(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x, y = x.double(), y.double()
    return x.T @ x, x.T @ y, y.pow(2).sum()


def test_the_held_out_ridge_is_the_smallest_for_an_exact_fit_and_the_largest_for_noise():
    from achroma.repair.refit import RIDGE_GRID, choose_ridge

    g = torch.Generator().manual_seed(0)
    x, x_held = torch.randn(400, 30, generator=g), torch.randn(100, 30, generator=g)
    w = torch.randn(30, 4, generator=g)
    assert choose_ridge(_grams(x, x @ w), _grams(x_held, x_held @ w)) == RIDGE_GRID[0]  # no noise: no shrinkage
    x, x_held = torch.randn(40, 30, generator=g), torch.randn(100, 30, generator=g)  # few images, targets noise
    noise = choose_ridge(_grams(x, torch.randn(40, 4, generator=g)), _grams(x_held, torch.randn(100, 4, generator=g)))
    assert noise == RIDGE_GRID[-1]  # predicting nothing beats fitting the noise
    assert choose_ridge(_grams(x, x @ w), _grams(x_held[:0], x_held[:0] @ w)) == 1e-4  # nothing held out: default


def test_the_auto_ridge_refit_with_nothing_merged_returns_the_model_unchanged(one_thread):
    torch.manual_seed(0)
    gray = fold_to_gray(create_model("resnet-cifar-20").eval(), "cifar")[0].eval()
    model = copy.deepcopy(gray)
    images = [(torch.rand(64, 1, 32, 32, generator=torch.Generator().manual_seed(i)), torch.zeros(64)) for i in range(4)]
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)][:4]
    report = ls_refit(model, gray, images, layers=convs, ridge="auto")
    assert report.ridges == [1e-6] * 4  # the least shrinkage wins on held-out images when the fit is exact
    x = torch.rand(8, 1, 32, 32)
    with torch.no_grad():
        assert float((model(x) - gray(x)).norm() / gray(x).norm()) < 1e-3
    with pytest.raises(ValueError, match="ridge must be"):
        ls_refit(model, gray, images, ridge="large")
    with pytest.raises(ValueError, match="ridge must be"):
        RepairConfig(refit_ridge=-1.0)


def test_the_lr_range_test_leaves_the_student_alone_and_reads_the_rate_off_its_curve(one_thread):
    from achroma.data import ImageDataset
    from achroma.distill.lr_range import BACKOFF, END_LR, START_LR, distill_lr_range
    from achroma.training import TrainConfig

    g = torch.Generator().manual_seed(0)
    images = ImageDataset(torch.randint(0, 256, (64, 3, 16, 16), generator=g, dtype=torch.uint8),
                          torch.arange(64) % 4, [str(i) for i in range(4)], name="tiny")
    color = create_model("resnet-cifar-20", num_classes=4).eval()
    student = fold_to_gray(copy.deepcopy(color), "cifar", example_input=torch.rand(1, 1, 16, 16))[0]
    before = {k: v.clone() for k, v in student.state_dict().items()}
    found = distill_lr_range(student, color, images, TrainConfig(batch_size=16, momentum=0.9, weight_decay=0.0),
                             teacher_mode="color", student_mode="gray", teacher_normalize="cifar",
                             student_normalize="none", steps=30)
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())  # tried on a copy
    assert found.lrs[0] == pytest.approx(START_LR) and all(a < b for a, b in zip(found.lrs, found.lrs[1:]))
    assert found.lrs[-1] <= END_LR * 1.0001 and len(found.losses) == len(found.lrs) <= 30
    best = min(range(len(found.losses)), key=found.losses.__getitem__)
    assert found.lr == pytest.approx(found.lrs[best] / BACKOFF)
    with pytest.raises(ValueError, match="distill_lr must be"):
        RepairConfig(distill_lr="fast")
    with pytest.raises(ValueError, match="distill_lr must be"):
        RepairConfig(distill_lr=0.0)


def test_the_compress_report_says_what_the_auto_ridge_chose(one_thread):
    from achroma.pipeline import compress
    from achroma.report import build_report, render_markdown

    torch.manual_seed(0)
    color = create_model("resnet-cifar-20").eval()
    result = compress(color, "cifar", random_images(60, seed=1), random_images(20, seed=2, split="test"),
                      CompressConfig(layers="first:2", keep=0.5, repair="ls-refit", seed=0, progress=False,
                                     repair_config=RepairConfig(refit_ridge="auto")))
    choices = result.settings["repair_choices"]
    assert list(choices) == ["merged+ls-refit"]  # the uncompressed model has nothing to refit
    ridges = choices["merged+ls-refit"]["refit_ridges"]
    assert ridges and set(ridges.values()) <= set(RIDGE_GRID)
    text = render_markdown(build_report(result))
    line = next(ln for ln in text.splitlines() if ln.startswith("| merged+ls-refit | refit ridge"))
    import re

    assert "## Automatic choices" in text and line.endswith("(held-out error) |")
    assert sum(int(n) for n in re.findall(r"in (\d+) layers", line)) == len(ridges)
