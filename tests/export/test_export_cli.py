"""`archspace export` choosing what to export (study best, --rank, --run-id, run directory) and its errors."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from export_testutil import run_cli

from archspace.cli import main


def one_paragraph_error(rc: int, err: str) -> str:
    assert rc == 2, err
    text = err.strip()
    assert text.startswith("error:") and "Traceback" not in text and "\n\n" not in text, text
    return text


def source_of(out) -> dict:
    return json.loads((out / "config.json").read_text())["archspace_export"]["source"]


@pytest.fixture(scope="module")
def study(trained, tmp_path_factory):
    """A study directory as `archspace study` leaves it: trials/<id>/ run directories, summary.json ranked
    by the study's own ranking, an MLflow store with a parent run and one child run per trial."""
    from safetensors.torch import load_model, save_model

    from archspace.blocks.model import SequenceModel
    from archspace.study.progress import rank_rows
    from archspace.study.space import Objective

    root = tmp_path_factory.mktemp("results")
    sdir = root / "studies" / "tiny-study"
    (sdir / "trials").mkdir(parents=True)
    (sdir / "study.json").write_text(json.dumps({"name": "tiny-study", "space_hash": "x"}))
    accs = {"t_low": 0.25, "t_high": 0.75}
    for i, (tid, acc) in enumerate(accs.items()):
        d = sdir / "trials" / tid
        shutil.copytree(trained[2], d)
        m = json.loads((d / "metrics.json").read_text())
        m["val/acc"] = m["test/acc"] = acc
        (d / "metrics.json").write_text(json.dumps(m))
        model = SequenceModel(trained[1].model)
        load_model(model, str(d / "model.safetensors"))
        with torch.no_grad():
            model.embed.weight.add_(float(i + 1))  # tell the trials apart by their weights
        save_model(model, str(d / "model.safetensors"))
    pruned = sdir / "trials" / "t_pruned"
    pruned.mkdir()
    shutil.copy(trained[2] / "resolved.yaml", pruned / "resolved.yaml")
    objectives = [Objective("test/acc", "max")]
    rows = [{"trial_id": tid, "status": "completed", "values": {"lr": 0.01}, "objectives": {"test/acc": acc},
             "params": 1, "state_size": 1, "steps": 5, "design_hash": trained[1].design_hash, "reason": None}
            for tid, acc in accs.items()]
    rows.append({"trial_id": "t_pruned", "status": "pruned", "values": {}, "objectives": {"test/acc": 0.99},
                 "params": 1, "state_size": 1, "steps": 1, "design_hash": None, "reason": None})
    summary = {"study": "tiny-study", "objectives": [{"metric": "test/acc", "mode": "max"}],
               "counts": {"completed": 2, "pruned": 1, "failed": 0, "running": 0, "pending": 0}, "total": 3,
               "best": None, "pareto": [], "failures": {}, "trials": rank_rows(rows, objectives)}
    (sdir / "summary.json").write_text(json.dumps(summary))

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{sdir / 'mlflow.db'}")
    exp = client.create_experiment("tiny-study")
    parent = client.create_run(exp, tags={"archspace.study": "tiny-study", "archspace.role": "study"}).info.run_id
    runs = {tid: client.create_run(exp, tags={"mlflow.parentRunId": parent, "archspace.trial_id": tid,
                                              "archspace.study": "tiny-study", "archspace.role": "trial"}).info.run_id
            for tid in ("t_low", "t_high", "t_pruned")}
    return root, sdir, parent, runs


def test_study_best_rank_and_run_id(study, tmp_path, capsys, monkeypatch):
    root, sdir, parent, runs = study
    # Which trial is exported is the question here. Each export's self-check (a fresh torch-only process
    # reproducing the logits, about 6 s) is the same for every source and is run for real by the `exported`
    # fixture; here it is only counted, once per export.
    import archspace.export

    checked = []
    monkeypatch.setattr(archspace.export, "verify", lambda out, run_dir, cfg: checked.append(out) or 0.0)
    # by name under the results root: rank 1 is the best completed trial (the pruned one is skipped)
    assert main(["export", "tiny-study", "--results-dir", str(root), "--out", str(tmp_path / "best")]) == 0
    src = source_of(tmp_path / "best")
    assert (src["trial_id"], src["rank"], src["study"]) == ("t_high", 1, "tiny-study")
    card = (tmp_path / "best" / "README.md").read_text()
    assert "tiny-study" in card and "rank 1 of 2 completed" in card and "`test/acc` = 0.75" in card
    assert main(["export", str(sdir), "--rank", "2", "--out", str(tmp_path / "second")]) == 0
    assert source_of(tmp_path / "second")["trial_id"] == "t_low"
    assert main(["export", str(sdir), "--run-id", runs["t_low"], "--out", str(tmp_path / "byrun")]) == 0
    src = source_of(tmp_path / "byrun")
    assert (src["trial_id"], src["mlflow_run_id"]) == ("t_low", runs["t_low"])
    from safetensors.torch import load_file

    for name, tid in (("best", "t_high"), ("second", "t_low"), ("byrun", "t_low")):
        got, want = load_file(str(tmp_path / name / "model.safetensors")), load_file(str(sdir / "trials" / tid / "model.safetensors"))
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    capsys.readouterr()
    # a trial directory given directly is a run of the study
    assert main(["export", str(sdir / "trials" / "t_low"), "--out", str(tmp_path / "direct")]) == 0
    assert source_of(tmp_path / "direct")["rank"] == 2
    assert [p.name for p in checked] == ["best", "second", "byrun", "direct"]


def test_study_errors(study, tmp_path, capsys):
    root, sdir, parent, runs = study
    cases = [
        (["export", str(sdir), "--rank", "3"], "only 2 completed"),
        (["export", str(sdir), "--rank", "0"], "--rank must be"),
        (["export", str(sdir), "--run-id", parent], "not a trial"),
        (["export", str(sdir), "--run-id", "0123456789abcdef0123456789abcdef"], "not found"),
        (["export", str(sdir), "--run-id", runs["t_pruned"]], "no final weights"),
        (["export", str(sdir / "trials" / "t_pruned")], "no final weights"),
        (["export", str(sdir / "trials" / "t_low"), "--rank", "1"], "run directory"),
        (["export", "no-such-study", "--results-dir", str(root)], "nothing to export"),
    ]
    for i, (argv, needle) in enumerate(cases):
        rc = main(argv + ["--out", str(tmp_path / f"o{i}")])
        text = one_paragraph_error(rc, capsys.readouterr().err)
        assert needle in text, (argv, text)
        assert not (tmp_path / f"o{i}").exists(), "nothing is written on error"


def test_ranking_without_summary(study, tmp_path):
    """An interrupted study has no summary.json: trials are ranked from their metrics.json."""
    from archspace.export import select

    _, sdir, _, _ = study
    copy = tmp_path / "studies" / "interrupted"
    shutil.copytree(sdir, copy, ignore=shutil.ignore_patterns("mlflow.db"))
    (copy / "summary.json").unlink()
    assert select(str(copy)).trial_id == "t_high"  # default objective: max val/acc
    assert select(str(copy), rank=2).trial_id == "t_low"


def test_cli_errors_exit_2_without_traceback(trained, exported, tmp_path, capsys):
    # one as a user runs it (the process's exit status and stderr), the rest through the same entry point
    proc = run_cli(["export", str(tmp_path / "does-not-exist"), "--out", str(tmp_path / "x")])
    one_paragraph_error(proc.returncode, proc.stderr)
    assert "nothing to export" in proc.stderr
    capsys.readouterr()  # run_cli echoes the process's output
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    rc = main(["export", str(trained[2]), "--out", str(busy)])
    text = one_paragraph_error(rc, capsys.readouterr().err)
    assert "not empty" in text and "--force" in text
    assert sorted(p.name for p in busy.iterdir()) == ["keep.txt"]
    assert main(["export", str(trained[2]), "--out", str(busy), "--force"]) == 0, capsys.readouterr().err
    assert (busy / "keep.txt").read_text() == "mine" and (busy / "model.safetensors").is_file()
    # exporting into a finished export again needs --force too
    capsys.readouterr()
    rc = main(["export", str(trained[2]), "--out", str(exported)])
    one_paragraph_error(rc, capsys.readouterr().err)
