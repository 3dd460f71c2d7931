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
    assert len(list((out / "points").glob("*.json"))) == 6  # a file per point


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
    assert len(list((tmp_path / "points").glob("*.json"))) == 3
    assert calls["merge"] == 1  # fields at 0.5, saved before its points were scored
    (tmp_path / "points" / ".0.5_random_none-0.json.x1.tmp").write_text('{"id": "half a po')  # a write cut short
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


def test_a_legacy_results_jsonl_is_still_read(finished, tmp_path, data):
    """Folders from before per-point files: their results.jsonl (a cut last line ignored) counts as done."""
    out, records = finished
    (tmp_path / "sweep.json").write_text((out / "sweep.json").read_text())
    lines = [json.dumps(r, sort_keys=True) for r in records[:2]]
    (tmp_path / "results.jsonl").write_text("\n".join(lines) + '\n{"id": "half a li')
    sweep = Sweep(_model(), "cifar", *data, tmp_path, _config(), log=None)
    assert [sweep.store.done(k) for k in sweep.keys()] == [True, True, False, False, False, False]


def _without_timings(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_two_shards_then_report_only_give_the_unsharded_tables(finished, tmp_path, data, capsys):
    out, records = finished
    sweep = Sweep(_model(), "cifar", *data, tmp_path, _config(), log=None)
    assert [len(sweep.shard(i, 2)) for i in (1, 2)] == [4, 2]  # whole (budget, method) groups, dealt in turn
    assert {k.id() for k in sweep.shard(1, 2)} == {"1|uncompressed|none", "1|uncompressed|ls-refit",
                                                  "0.5|random|none", "0.5|random|ls-refit"}
    first = sweep.run(shard=(2, 2))
    assert [r["id"] for r in first] == ["0.5|fields|none", "0.5|fields|ls-refit"]
    assert not (tmp_path / "models" / "macs-0.5-random.safetensors").is_file()  # the other shard's to build
    # half done: --report-only names what is missing, in the table and on stderr
    assert cli.main(["sweep", "--out", str(tmp_path), "--report-only"]) == 0
    assert "4 of 6 points missing: 1|uncompressed|none" in capsys.readouterr().err
    assert "Not yet computed (4 of 6 points)" in (tmp_path / "results.md").read_text()
    # another process, the other shard, into the same folder
    Sweep(_model(), "cifar", *data, tmp_path, _config(), log=None).run(shard=(1, 2))
    assert cli.main(["sweep", "--out", str(tmp_path), "--report-only"]) == 0
    assert "missing" not in capsys.readouterr().err
    reference = tmp_path / "unsharded"
    write_tables(records, reference, title="Synthetic")
    assert (tmp_path / "results.md").read_text() == (reference / "results.md").read_text()
    assert _without_timings(json.loads((tmp_path / "results.json").read_text())) == \
        _without_timings(json.loads((reference / "results.json").read_text()))
    # the grid named on the command line instead of the folder's grid.json
    assert cli.main(["sweep", "--out", str(tmp_path), "--report-only", "--target-macs", "0.5,0.3",
                     "--methods", "fields,random", "--repairs", "none,ls-refit"]) == 0
    assert "4 of 10 points missing: 0.3|fields|none" in capsys.readouterr().err


def test_bad_shards_are_refused_with_the_numbering():
    from achroma.sweep import parse_shard

    assert parse_shard("1/2") == (1, 2) and parse_shard("2/2") == (2, 2)
    for bad, match in (("0/2", "numbered from 1"), ("3/2", "between 1 and 2"), ("1", "expected i/n"),
                       ("a/b", "expected i/n"), ("1/0", "at least 1")):
        with pytest.raises(ValueError, match=match):
            parse_shard(bad)
