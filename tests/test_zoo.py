"""Every torchvision classifier family, one small variant each: is "any traced graph" true?

Whole network (`whole_case`): the folded model compressed to half its MACs in one `Compressor`
call (k-means on the weights), the MACs counted by FlopCounter at most the budget plus one channel
of every merged group, the outputs finite; and an exact-duplicate pair made in every channel group
at once, then every group merged in turn, leaves the outputs unchanged (1e-5 relative). Or one
ValueError naming the layer and the structure.

Per family (random weights, BatchNorm statistics and affines randomized, eval mode, float64, the
smallest input the family accepts): the fold to gray is exact; on the first conv and on the conv
halfway through the forward order, an exact-duplicate merge (channel pairs copied in every
producer of the channel group, chosen within the blocks `channel_constraints` allows) leaves the
outputs unchanged and removes exactly the rows/columns of the group, or the merge is refused with
one ValueError that names the layer and the reason. Nothing else may happen.

The README's family table is made from these results: the test fails when it differs, and
`ACHROMA_WRITE_ZOO_TABLE=1 python -m pytest tests/test_zoo.py` rewrites it.
"""
from __future__ import annotations

import copy
import os
import re
import warnings
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision.models as tvm
from channel_copies import copy_channels

from achroma.costs import count_macs
from achroma.data import get_normalization
from achroma.fold import fold_to_gray
from achroma.pipeline import Budget, CompressConfig, Compressor
from achroma.pipeline.budget import width_cost
from achroma.surgery import channel_constraints, merge_channels
from achroma.surgery.graph import trace_channel_group
from achroma.surgery.groups import ChannelGraph

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- zoo-table:start -->", "<!-- zoo-table:end -->"
TOL = 1e-5

# family -> (variant, input size, constructor keywords). One small variant per family.
PICK: dict[str, tuple[str, int, dict]] = {
    "alexnet": ("alexnet", 64, {}),
    "convnext": ("convnext_tiny", 32, {}),
    "densenet": ("densenet121", 32, {}),
    "efficientnet": ("efficientnet_b0", 32, {}),
    "efficientnet_v2": ("efficientnet_v2_s", 32, {}),
    "googlenet": ("googlenet", 32, {"aux_logits": False, "init_weights": False}),
    "inception_v3": ("inception_v3", 75, {"aux_logits": False, "init_weights": False}),
    "maxvit": ("maxvit_t", 224, {}),  # its window partitions need 224 x 224
    "mnasnet": ("mnasnet0_5", 32, {}),
    "mobilenet_v2": ("mobilenet_v2", 32, {}),
    "mobilenet_v3": ("mobilenet_v3_small", 32, {}),
    "regnet_x": ("regnet_x_400mf", 32, {}),
    "regnet_y": ("regnet_y_400mf", 32, {}),
    "resnet": ("resnet18", 32, {}),
    "resnext": ("resnext50_32x4d", 32, {}),
    "shufflenet_v2": ("shufflenet_v2_x0_5", 32, {}),
    "squeezenet": ("squeezenet1_0", 64, {}),
    "swin": ("swin_t", 32, {}),
    "swin_v2": ("swin_v2_t", 32, {}),
    "vgg": ("vgg11_bn", 32, {}),
    "vit": ("vit_b_16", 32, {"image_size": 32}),
    "wide_resnet": ("wide_resnet50_2", 32, {}),
}


def family(name: str) -> str:
    """resnet18 -> resnet, efficientnet_v2_s -> efficientnet_v2, regnet_y_400mf -> regnet_y, ..."""
    return re.match(r"[a-z]+(?:_resnet)?(?:_v\d)?(?:_[xy](?=_))?", name).group(0)


def _build(fam: str) -> tuple[nn.Module, torch.Tensor]:
    name, size, kw = PICK[fam]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = tvm.get_model(name, weights=None, num_classes=10, **kw).double().eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g, dtype=torch.float64) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g, dtype=torch.float64) - 0.5)
                m.running_mean.copy_(torch.rand(n, generator=g, dtype=torch.float64) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g, dtype=torch.float64) + 0.5)
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    return model, x


def _forward_conv_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    order: list[str] = []
    hooks = [m.register_forward_hook(lambda *_, p=p: order.append(p))
             for p, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return list(dict.fromkeys(order))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def _pairs(constraints) -> list[tuple[int, int]]:
    """Duplicate pairs (source, copy) a merge can take: spread out when free; one per block otherwise."""
    n = constraints.n_channels
    if constraints.free:
        return sorted({(0, 1), (2, n - 1), (n // 3, 2 * n // 3)})
    return [(b[0], b[1]) for b in constraints.blocks() if len(b) >= 2]


def _labels(pairs, n: int) -> np.ndarray:
    labels = np.arange(n)
    for src, dst in pairs:
        labels[dst] = labels[src]
    return np.unique(labels, return_inverse=True)[1]


def _removed_params(model: nn.Module, uses, removed: int) -> int:
    """Parameters that removing `removed` channels from every module of the group must drop."""
    total = 0
    modules = dict(model.named_modules())
    for use in uses:
        m = modules.get(use.path)  # None: a ShuffleNet shuffle made explicit for the merge (no parameters)
        slots = len(next(iter(use.index.values())))
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            total += removed * 2
        elif isinstance(m, nn.Conv2d) and use.role == "producer":
            total += removed * (m.weight[0].numel() + (1 if m.bias is not None else 0))
        elif isinstance(m, nn.Conv2d):  # consumer: a column per output channel that reads it
            total += removed * (m.out_channels // m.groups) * m.weight[0, 0].numel()
        elif isinstance(m, nn.Linear) and use.role == "consumer":
            total += removed * slots * m.out_features
        elif isinstance(m, nn.Linear):
            total += removed * (m.in_features + (1 if m.bias is not None else 0))
    # a conv that reads and writes the same stream (EfficientNetV2's fused residual block) loses the
    # removed rows and the removed columns: their crossing was counted twice
    roles: dict[str, set] = {}
    for use in uses:
        roles.setdefault(use.path, set()).add(use.role)
    for path, both in roles.items():
        m = modules.get(path)
        if both == {"producer", "consumer"} and isinstance(m, nn.Conv2d) and m.groups == 1:
            total -= removed * removed * m.weight[0, 0].numel()
    return total


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _merge_case(model: nn.Module, x: torch.Tensor, path: str) -> dict:
    """Outcome of an exact-duplicate merge on `path`: merged (with checks) or refused (the ValueError)."""
    try:
        uses, constraints = trace_channel_group(model, path, x)
    except ValueError as err:
        return {"path": path, "refused": str(err)}
    work = model  # duplicates are made in place: the model is this test's own, and merging copies it
    pairs = _pairs(constraints)
    copy_channels(work, uses, pairs, names=("weight", "bias", "running_mean", "running_var"))
    n = constraints.n_channels
    try:
        merged = merge_channels(work, path, _labels(pairs, n), x)
    except ValueError as err:
        return {"path": path, "refused": str(err)}
    with torch.no_grad():
        before, after = work(x), merged(x)
    count_merged, width = _count(merged), merged.get_submodule(path).out_channels
    del merged
    return {"path": path, "pairs": pairs, "rel": _rel(after, before), "shape_ok": after.shape == before.shape,
            "channels": (n, width),
            "params": (_count(work), count_merged, _removed_params(work, uses, len(pairs))),
            "constrained": [p.path for p in constraints.partitions]}


@contextmanager
def one_thread():
    """On the shared 2-core machine two torch threads made these cases up to 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@lru_cache(maxsize=None)
def zoo_case(fam: str) -> dict:
    with one_thread():
        return _zoo_case(fam)


def _zoo_case(fam: str) -> dict:
    model, x = _build(fam)
    norm = get_normalization("imagenet")
    gray_in = x[:, :1]
    gray, _ = fold_to_gray(model, "imagenet", example_input=gray_in)
    with torch.no_grad():
        fold_rel = _rel(gray(gray_in), model(norm(gray_in.expand(-1, 3, -1, -1))))
    del gray  # VGG's and AlexNet's float64 copies are 0.5-1 GB each: keep as few alive as possible
    order = _forward_conv_order(model, x)
    first, middle = order[0], order[len(order) // 2]
    cases = {"first": _merge_case(model, x, first)}
    cases["inner"] = cases["first"] if middle == first else _merge_case(model, x, middle)
    return {"family": fam, "model": PICK[fam][0], "size": PICK[fam][1], "fold_rel": fold_rel, **cases}


# the heaviest first, so that two workers finish together
WHOLE_ORDER = ["efficientnet_v2", "wide_resnet", "densenet", "resnext", "efficientnet", "inception_v3", "regnet_x",
               "regnet_y", "vgg", "maxvit", "googlenet", "mobilenet_v2", "alexnet", "mnasnet", "shufflenet_v2",
               "mobilenet_v3", "resnet", "squeezenet", "vit", "convnext", "swin", "swin_v2"]
_WHOLE: dict[str, dict] = {}


def whole_case(fam: str) -> dict:
    """The whole-network outcome of `fam`; every family's is computed on the first call, two processes at once
    (one thread each: the 2-core machine's cores both busy, about half the time of one process)."""
    if fam not in _WHOLE:
        _WHOLE.update(in_two_processes(_whole_case, [f for f in WHOLE_ORDER if f not in _WHOLE]))
    return _WHOLE[fam]


def in_two_processes(case, names: list[str]) -> dict[str, dict]:
    """`case(name)` for every name, in two spawned processes of one torch thread each (`case` must be a
    module-level function, so that the processes can import it)."""
    import concurrent.futures
    import functools
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool:
        return dict(zip(names, pool.map(functools.partial(_one_thread_call, case), names)))


def _one_thread_call(case, name: str) -> dict:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    return case(name)


def _whole_case(fam: str) -> dict:
    model, x = _build(fam)
    size = int(x.shape[-1])
    out: dict = {"family": fam}
    try:  # the budget in float32 (as deployed; float64 doubles the time), the duplicates in float64 below
        comp = Compressor(CompressConfig(seed=0, selection="weights", progress=False), Budget(macs=0.5))
        comp.fit(copy.deepcopy(model).float(), "imagenet", size=size)
    except ValueError as err:
        out["refused"] = str(err)
        return out
    x32 = x.float()
    cost = width_cost(comp.folded_, comp.groups_, (1, size, size))
    slack = sum(cost.full["macs"] - cost.cost({g: cost.channels[g] - 1})["macs"] for g in comp.plan_.layers)
    folded, merged = count_macs(comp.folded_, (1, size, size)), count_macs(comp.model_, (1, size, size))
    with torch.no_grad():
        finite = bool(torch.isfinite(comp.model_(x32[:, :1])).all())
    out.update(folded=folded, merged=merged, slack=slack, finite=finite, groups=len(comp.plan_.layers),
               converted=comp.converted_)
    del comp
    out.update(_duplicates_everywhere(model, x))
    return out


def _duplicates_everywhere(model: nn.Module, x: torch.Tensor) -> dict:
    """A duplicate pair in every mergeable group of the fold, then every group merged: the outputs stay."""
    gray_in = x[:, :1]
    gray, _ = fold_to_gray(model, "imagenet", example_input=gray_in)
    graph = ChannelGraph(gray, gray_in[:1])
    plan = []
    for g in graph.groups():
        if g.refused is not None or g.max_removed == 0:
            continue
        constraints = graph.constraints(g.root)
        pairs = [(0, 1)] if constraints.free else _pairs(constraints)  # disjoint from any other pair
        if constraints.free and g.channels < 3:
            continue  # a pair of a 2-channel group would leave one channel: refused by design
        copy_channels(gray, graph.uses(g.root), pairs)
        plan.append((g.root, pairs, g.channels))
    with torch.no_grad():
        before = gray(gray_in)
    current, order = gray, graph.order
    for root, pairs, n in plan:  # one trace a step; after the first, the graph edits its own model
        current = ChannelGraph(current, gray_in[:1], own=current is not gray, order=order).merge(root, _labels(pairs, n))
    with torch.no_grad():
        after = current(gray_in)
    return {"dup_groups": len(plan), "dup_rel": _rel(after, before)}


# whole networks whose groups are refused (or too few left to reach half the MACs), and the structure named
WHOLE_REFUSALS = {"convnext": "LayerNorm", "swin": "LayerNorm", "swin_v2": "LayerNorm", "vit": "bare parameter",
                  "maxvit": "cannot be merged at all"}


@pytest.mark.parametrize("fam", sorted(PICK))
def test_zoo_whole_network(fam):
    case = whole_case(fam)
    if "refused" in case:
        assert fam in WHOLE_REFUSALS, f"{fam}: whole network refused: {case['refused']}"
        assert WHOLE_REFUSALS[fam] in case["refused"], case["refused"]
        return
    assert case["merged"] <= 0.5 * case["folded"] + case["slack"], case
    assert case["finite"]
    assert case["dup_groups"] > 0 and case["dup_rel"] < TOL, f"{fam}: duplicates merged changed the output {case}"


def test_one_variant_of_every_family():
    families = {family(n) for n in tvm.list_models(module=tvm)}
    assert families == set(PICK), f"families not covered / gone: {families ^ set(PICK)}"
    assert all(family(v) == f for f, (v, _, _) in PICK.items())
    assert sorted(WHOLE_ORDER) == sorted(PICK)


@pytest.mark.parametrize("fam", sorted(PICK))
def test_zoo_family(fam):
    case = zoo_case(fam)
    assert case["fold_rel"] < TOL, f"fold not exact: {case['fold_rel']:.2e}"
    for which in ("first", "inner"):
        c = case[which]
        if "refused" in c:
            assert c["path"] in c["refused"], f"refusal must name the layer: {c['refused']}"
            continue
        assert c["shape_ok"]
        assert c["rel"] < TOL, f"{which} conv {c['path']}: merge changed the output by {c['rel']:.2e} (relative)"
        n, after = c["channels"]
        assert after == n - len(c["pairs"])
        before, merged, expected = c["params"]
        assert merged == before - expected, f"{which} conv {c['path']}: removed {before - merged}, expected {expected}"


# What the README may say about each family: every refusal must come from a structure we name.
EXPECTED_REFUSALS = {
    "convnext": ("LayerNorm", "LayerNorm"),
    "swin": ("LayerNorm", "LayerNorm"),
    "swin_v2": ("LayerNorm", "LayerNorm"),
    "vit": ("bare parameter", "bare parameter"),
}


@pytest.mark.parametrize("fam", sorted(PICK))
def test_zoo_refusals_are_the_known_ones(fam):
    case = zoo_case(fam)
    expected = EXPECTED_REFUSALS.get(fam, (None, None))
    for which, want in zip(("first", "inner"), expected):
        got = case[which].get("refused")
        if want is None:
            assert got is None, f"{fam} {which} conv refused: {got}"
        else:
            assert got is not None and want in got, got


def test_regnet_y_unbalanced_groups_are_refused():
    fam = "regnet_y"
    case = zoo_case(fam)
    assert case["inner"].get("constrained"), "the inner conv's group should reach a grouped conv"
    model, x = _build(fam)
    path = case["inner"]["path"]
    with one_thread():
        _check_regnet_refusals(model, path, x)


def _check_regnet_refusals(model, path, x):
    constraints = channel_constraints(model, path, x)
    block = constraints.blocks()[0]
    labels = np.arange(constraints.n_channels)
    labels[block[1]] = labels[block[0]]  # one pair, in one group only
    with pytest.raises(ValueError, match=r"unbalanced.*grouped conv.*equal"):
        merge_channels(model, path, np.unique(labels, return_inverse=True)[1], x)
    other = constraints.blocks()[1]
    labels = np.arange(constraints.n_channels)
    labels[other[0]] = labels[block[0]]  # a pair across two groups
    with pytest.raises(ValueError, match=r"straddles.*grouped conv"):
        merge_channels(model, path, np.unique(labels, return_inverse=True)[1], x)


def _outcome(c: dict) -> str:
    if "refused" in c:
        return "refused: " + _reason(c["refused"])
    before, after, _ = c["params"]
    n, m = c["channels"]
    how = f" ({len(c['pairs'])} pairs, one per group)" if c["constrained"] else ""
    return f"exact, {n} -> {m} channels{how}, -{before - after:,} parameters"


def _reason(msg: str) -> str:
    if "LayerNorm" in msg:
        return "LayerNorm over the channels"
    if "bare parameter" in msg:
        return "class token / position embedding (bare parameter)"
    return msg.split(":")[0]


def _whole_outcome(c: dict) -> str:
    if "refused" in c:
        return "refused: " + _reason(c["refused"])
    return (f"{c['merged'] / c['folded']:.1%} of the MACs ({c['groups']} groups merged); duplicates in "
            f"{c['dup_groups']} groups merge exactly")


def zoo_table() -> str:
    lines = ["| family | variant (input) | fold | merge first conv | merge inner conv | whole network at 50% MACs |",
             "|---|---|---|---|---|---|"]
    for fam in sorted(PICK):
        case = zoo_case(fam)
        inner = case["inner"]
        if inner["path"] == case["first"]["path"]:
            inner_label = "(its only conv is the first)"
        else:
            inner_label = f"`{inner['path']}`: {_outcome(inner)}"
        lines.append(f"| {fam} | {case['model']} ({case['size']}x{case['size']}) | exact | "
                     f"`{case['first']['path']}`: {_outcome(case['first'])} | {inner_label} | "
                     f"{_whole_outcome(whole_case(fam))} |")
    return "\n".join(lines) + "\n"


def test_readme_zoo_table_is_generated():
    table = zoo_table()
    text = README.read_text()
    assert START in text and END in text, "README lacks the zoo table markers"
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    if os.environ.get("ACHROMA_WRITE_ZOO_TABLE") == "1":
        README.write_text(f"{head}{START}\n{table}{END}{tail}")
        return
    assert rest.split(END, 1)[0].strip() == table.strip(), (
        "README's zoo table differs from what the test computes; rerun with ACHROMA_WRITE_ZOO_TABLE=1")
