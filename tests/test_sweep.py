"""`achroma sweep`: every point once, the same sizes for every method, and a killed sweep resumes."""
from __future__ import annotations

import json

import pytest
import torch

import achroma.cli as cli
import achroma.sweep.run as sweep_run
from achroma.data import ImageDataset
from achroma.models import create_model
from achroma.pipeline import CompressConfig, RepairConfig
from achroma.report import count_macs
from achroma.sweep import Sweep, SweepConfig, write_tables
from achroma.sweep.plots import pareto_front

SIZE = 16


def _data(n: int, seed: int, split: str) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    return ImageDataset(images, torch.arange(n) % 10, [f"c{i}" for i in range(10)], name="synthetic", split=split,
                        extra={"display_name": "Synthetic"})


def _model():
    torch.manual_seed(0)
    return create_model("seed-densenet-tiny").eval()


def _config(**kw) -> SweepConfig:
    merge = CompressConfig(cluster_method="kmeans", fields={"steps": 2}, progress=False,
                           repair_config=RepairConfig(batch_size=16, refit_images=20))
    return SweepConfig(**{"targets": [0.5], "methods": ["fields", "random"], "repairs": ["none", "ls-refit"],
                          "merge": merge, **kw})


@pytest.fixture(scope="module")
def data():
    return _data(40, 1, "train"), _data(20, 2, "test")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("sweep")
    records = Sweep(_model(), "cifar", *data, out, _config(), log=None).run()
    return out, records


def test_every_point_is_computed_once_with_matched_sizes(finished):
    out, records = finished
    ids = [r["id"] for r in records]
    assert ids == ["1|uncompressed|none", "1|uncompressed|ls-refit", "0.5|fields|none", "0.5|fields|ls-refit",
                   "0.5|random|none", "0.5|random|ls-refit"]
    merged = [r for r in records if r["target"] == 0.5]
    assert len({(r["params"], r["macs"]) for r in merged}) == 1  # every method keeps the same channels
    ref = records[0]
    assert merged[0]["macs"] <= 0.5 * ref["macs"] * 1.05 and merged[0]["params"] < ref["params"]
    model = sweep_run.load_checkpoint(out / "models" / "macs-0.5-fields.safetensors")[0]
    assert count_macs(model, (1, SIZE, SIZE)) == merged[0]["macs"]  # an independent count of the saved model
    assert len((out / "results.jsonl").read_text().splitlines()) == 6


def test_a_killed_sweep_recomputes_nothing_finished(tmp_path, data, monkeypatch):
    real_eval, real_fit = sweep_run.evaluate, sweep_run.Compressor.fit
    calls = {"evaluate": 0, "merge": 0}

    def dying(*a, **k):
        calls["evaluate"] += 1
        if calls["evaluate"] == 4:
            raise KeyboardInterrupt  # killed while scoring the 4th point
        return real_eval(*a, **k)

    def counting(*a, **k):
        calls["merge"] += 1
        return real_fit(*a, **k)

    monkeypatch.setattr(sweep_run, "evaluate", dying)
    monkeypatch.setattr(sweep_run.Compressor, "fit", counting)
    with pytest.raises(KeyboardInterrupt):
        Sweep(_model(), "cifar", *data, tmp_path, _config(), log=None).run()
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 3
    assert calls["merge"] == 1  # fields at 0.5, saved before its points were scored
    with open(tmp_path / "results.jsonl", "a") as f:
        f.write('{"id": "half a li')  # a write cut short by the kill
    calls.update(evaluate=10, merge=0)
    records = Sweep(_model(), "cifar", *data, tmp_path, _config(), log=None).run()
    assert calls["evaluate"] == 10 + 3 and calls["merge"] == 1  # 3 points left; only 'random' is merged anew
    assert len(records) == 6
    again = Sweep(_model(), "cifar", *data, tmp_path, _config(), log=None).run()
    assert calls["evaluate"] == 13 and again == records  # a finished sweep computes nothing


def test_a_folder_from_other_settings_is_refused(finished, data):
    out, _ = finished
    with pytest.raises(ValueError, match="other settings"):
        Sweep(_model(), "cifar", *data, out, _config(by="params"), log=None)


def test_bad_sweeps_fail_before_any_work():
    for bad, match in (({"targets": [1.5]}, "strictly between"), ({"methods": ["magic"]}, "unknown selection"),
                       ({"repairs": ["polish"]}, "unknown repair")):
        with pytest.raises(ValueError, match=match):
            _config(**bad)
    with pytest.raises(ValueError, match="exact cluster counts"):
        SweepConfig(targets=[0.5], merge=CompressConfig(cluster_method="dbscan"))


def test_tables_and_plots(finished, tmp_path):
    out, records = finished
    paths = write_tables(records, tmp_path, title="Synthetic")
    assert {p.name for p in paths} == {"results.csv", "results.json", "results.md", "pareto-params.png",
                                       "pareto-macs.png"}
    md = (tmp_path / "results.md").read_text()
    assert "## 0.5 kept" in md and "| random |" in md and "| uncompressed |" in md
    assert len((tmp_path / "results.csv").read_text().splitlines()) == 1 + len(records)
    assert json.loads((tmp_path / "results.json").read_text()) == records
    assert pareto_front([(1, 50), (2, 40), (3, 70), (0.5, 10)]) == [(0.5, 10), (1, 50), (3, 70)]


def test_cli_sweep_refuses_a_non_sweep_folder(tmp_path, capsys):
    (tmp_path / "other.txt").write_text("x")
    code = cli.main(["sweep", "--model", "resnet-cifar-20", "--target-macs", "0.5", "--out", str(tmp_path),
                     "--dataset", "folder:/nonexistent"])
    assert code == 2 and "not empty" in capsys.readouterr().err


def test_cli_report_only_needs_no_budget_and_rewrites_the_tables(finished, capsys):
    out, records = finished
    (out / "results.md").unlink(missing_ok=True)
    assert cli.main(["sweep", "--out", str(out), "--report-only"]) == 0
    assert "| uncompressed |" in (out / "results.md").read_text()
    assert cli.main(["sweep", "--out", str(out / "missing"), "--report-only"]) == 2
    assert cli.main(["sweep", "--model", "resnet-cifar-20", "--out", str(out / "new")]) == 2
    assert "--target-macs" in capsys.readouterr().err
