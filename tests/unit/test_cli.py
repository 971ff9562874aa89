"""The eegfmri command line: parsing, path checks, exit codes, logs, failure isolation.

The processing stages are replaced by small real functions (they read the EEG and write a
derivative through the writer) so these tests check the application shell only.
"""

from __future__ import annotations

import sys
from pathlib import Path

import mne
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))
from bidstree import make_bids_tree  # noqa: E402

from bids_app import __version__  # noqa: E402
from bids_app.cli import build_parser, main  # noqa: E402
from bids_app.workflows import group as group_wf  # noqa: E402
from bids_app.workflows import participant as part_wf  # noqa: E402


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_bids_tree(tmp_path_factory.mktemp("cli") / "ds", subjects=("01", "02"),
                          runs=(("checker", None), ("tp", "01")))


def _eeg_stage(run, config, writer):
    """Read the EEG, write it as desc-preproc; fail on task tp of sub-02."""
    if run.entities["sub"] == "02" and run.entities["task"] == "tp":
        raise RuntimeError("planted failure")
    raw = mne.io.read_raw_brainvision(run.eeg, preload=True, verbose="error")
    path = writer.build_path({**run.entities, "desc": "preproc"}, suffix="eeg",
                             extension=".vhdr", datatype="eeg")
    writer.write_raw_brainvision(path, raw)
    return {"path": path}


def _report_stage(subject, outcomes, config, writer):
    lines = [f"{o.run.run_id}: {[f.stage for f in o.failures]}" for o in outcomes]
    return writer.write_bytes(f"sub-{subject}.html", "\n".join(lines).encode())


@pytest.fixture
def stages(monkeypatch):
    monkeypatch.setitem(part_wf.STAGES, "eeg", _eeg_stage)
    monkeypatch.setitem(part_wf.STAGES, "fmri", None)
    monkeypatch.setitem(part_wf.STAGES, "coupling", None)
    monkeypatch.setitem(part_wf.STAGES, "report", _report_stage)


def test_version_help_and_labels(capsys):
    assert main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out
    assert main(["--help"]) == 0
    assert main(["simulate", "--help"]) == 0
    args = build_parser().parse_args(["/", "out", "participant", "--participant-label",
                                      "sub-01", "02", "--task-label", "task-tp"])
    assert args.participant_label == ["01", "02"] and args.task_label == ["tp"]


@pytest.mark.parametrize("label", ["../01", "01/x", "sub-0_1", "a..b"])
def test_bad_labels_exit_2(tree, tmp_path, label, capsys):
    code = main([str(tree), str(tmp_path / "o"), "participant", "--participant-label", label])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "label" in err
    assert not (tmp_path / "o").exists()


def test_path_checks_exit_2(tree, tmp_path, capsys):
    cases = [
        ([str(tmp_path / "missing"), str(tmp_path / "o"), "participant"], "does not exist"),
        ([str(tree), str(tree), "participant"], "is the input BIDS directory"),
        ([str(tree), str(tree / "sub-01" / "out"), "participant"], "inside the input BIDS"),
        ([str(tree), str(tmp_path / "o"), "participant", "--participant-label", "07"],
         "existing labels: 01, 02"),
        ([str(tree), str(tmp_path / "o"), "group"], "run the participant level first"),
        ([str(tree), str(tmp_path / "o"), "participant", "--fmri-backend", "derivatives"],
         "needs --fmriprep-dir"),
    ]
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cases.append(([str(tree), str(blocker / "out"), "participant"], "is not writable"))
    for argv, message in cases:
        code = main(argv + ["--skip-bids-validation", "-q"])
        err = capsys.readouterr().err
        assert code == 2, (argv, err)
        assert message in err and "Traceback" not in err, (argv, err)
    assert not (tree / "sub-01" / "out").exists()


def test_participant_run_isolates_failures(tree, tmp_path, stages, capsys):
    out = tmp_path / "out"
    code = main([str(tree), str(out), "participant", "-q", "--nprocs", "1"])
    assert code == 1  # sub-02 tp failed, everything else finished
    crash = out / "logs" / "crash-sub-02_ses-01_task-tp_run-01-eeg.txt"
    assert crash.exists() and "planted failure" in crash.read_text()
    assert "Traceback" in crash.read_text()
    done = sorted(p.name for p in out.rglob("*_desc-preproc_eeg.vhdr"))
    assert done == ["sub-01_ses-01_task-checker_desc-preproc_eeg.vhdr",
                    "sub-01_ses-01_task-tp_run-01_desc-preproc_eeg.vhdr",
                    "sub-02_ses-01_task-checker_desc-preproc_eeg.vhdr"]
    report = (out / "sub-02.html").read_text()
    assert "sub-02_ses-01_task-tp_run-01: ['eeg']" in report
    assert len(list((out / "logs").glob("eegfmri-*.log"))) == 1
    assert len(list((out / "logs").glob("config-*.toml"))) == 1
    assert "Traceback" not in capsys.readouterr().err


def test_parallel_subjects_match_sequential(tree, tmp_path, stages):
    for nprocs, out in ((1, tmp_path / "seq"), (2, tmp_path / "par")):
        assert main([str(tree), str(out), "participant", "-q", "--skip-bids-validation",
                     "--nprocs", str(nprocs)]) == 1
    files = {}
    for out in (tmp_path / "seq", tmp_path / "par"):
        found = sorted(p for p in out.rglob("sub-*/**/*")
                       if p.is_file() and p.relative_to(out).parts[0] != "work")
        files[out.name] = {p.relative_to(out): p.read_bytes() for p in found}
    assert files["seq"] == files["par"] and len(files["seq"]) == 12
    assert (tmp_path / "par" / "logs" / "crash-sub-02_ses-01_task-tp_run-01-eeg.txt").exists()
    assert (tmp_path / "par" / "sub-01.html").exists()


def test_participant_then_group(tree, tmp_path, stages, monkeypatch):
    out = tmp_path / "out"
    assert main([str(tree), str(out), "participant", "-q", "--participant-label", "01",
                 "--skip-bids-validation"]) == 0
    calls = []

    def models(output_dir, config, writer):
        calls.append("models")
        return {"subjects": sorted(p.name for p in Path(output_dir).glob("sub-*") if p.is_dir())}

    def masking(models_result, config, writer):
        calls.append("masking")
        raise ValueError("masking exploded")

    def report(models_result, masking_result, config, writer):
        calls.append(("report", models_result["subjects"], masking_result))
        return writer.write_bytes("group.html", b"<html></html>")

    monkeypatch.setitem(group_wf.STAGES, "models", models)
    monkeypatch.setitem(group_wf.STAGES, "masking", masking)
    monkeypatch.setitem(group_wf.STAGES, "group_report", report)
    assert main([str(tree), str(out), "group", "-q"]) == 1
    assert calls == ["models", "masking", ("report", ["sub-01"], None)]
    assert (out / "logs" / "crash-group-masking.txt").exists()
    assert (out / "group.html").exists()


def test_unimportable_stage_stops_the_run_before_any_output(tree, tmp_path, monkeypatch,
                                                            capsys):
    monkeypatch.setitem(part_wf.STAGES, "eeg", ("bids_app.no_such_module", "run"))
    monkeypatch.setitem(part_wf.STAGES, "fmri", None)
    monkeypatch.setitem(part_wf.STAGES, "report", None)
    out = tmp_path / "o"
    code = main([str(tree), str(out), "participant", "--participant-label", "01",
                 "--skip-bids-validation", "-q"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1
    assert last.startswith("eegfmri: error: Stage 'eeg' cannot be imported "
                           "(bids_app.no_such_module.run: ModuleNotFoundError"), last
    assert "reinstall eegfmri" in last
    assert not out.exists()


def test_subcommands_dispatch(tmp_path, monkeypatch, capsys):
    import bids_app.simulate.dataset as simulate

    seen = {}

    def fake_simulate(out_dir, *, scale, layout, null, seed, realism):
        seen.update(out=out_dir, scale=scale, layout=layout, null=null, seed=seed,
                    realism=realism)
        return out_dir

    monkeypatch.setattr(simulate, "simulate_dataset", fake_simulate)
    assert main(["simulate", str(tmp_path / "sim"), "--scale", "tiny", "--layout",
                 "natview", "--null", "--seed", "3", "--realism", "hard"]) == 0
    assert seen == {"out": tmp_path / "sim", "scale": "tiny", "layout": "natview",
                    "null": True, "seed": 3, "realism": "hard"}
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert main(["simulate", str(tmp_path / "full")]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert main(["convert", "natview", str(tmp_path / "nope"), str(tmp_path / "b")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["download", "natview", str(tmp_path / "d"), "--subjects", "../x"]) == 2
    assert "must not contain" in capsys.readouterr().err


def test_logging_goes_to_file_and_library_warnings_stay_off_console(tmp_path, capsys):
    import logging
    import warnings

    from bids_app.utils import logging_to

    log = tmp_path / "logs" / "x.log"
    with logging_to(log, verbosity=0):
        logging.getLogger("bids_app.test").info("hello from eegfmri")
        logging.getLogger("bids_app.test").debug("debug detail")
        warnings.warn("library noise", UserWarning, stacklevel=1)
    err = capsys.readouterr().err
    assert "hello from eegfmri" in err and "debug detail" not in err
    assert "library noise" not in err
    text = log.read_text()
    assert "hello from eegfmri" in text and "debug detail" in text and "library noise" in text
    assert not logging.getLogger("bids_app").handlers  # removed after the block


def test_reports_only_skips_processing(tree, tmp_path, stages, monkeypatch):
    def must_not_run(*args):
        raise AssertionError("processing stage called with --reports-only")

    monkeypatch.setitem(part_wf.STAGES, "eeg", must_not_run)
    out = tmp_path / "out"
    assert main([str(tree), str(out), "participant", "-q", "--skip-bids-validation",
                 "--reports-only", "--participant-label", "01"]) == 0
    assert (out / "sub-01.html").read_text().count("[]") == 2  # two runs, no failures


def test_cuda_without_gpu_exit_2(tree, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible")
    assert main([str(tree), str(tmp_path / "o"), "participant", "--device", "cuda"]) == 2
    assert "no CUDA GPU is available" in capsys.readouterr().err


def test_finished_runs_do_not_keep_data_in_memory(tree, tmp_path, monkeypatch):
    from dataclasses import dataclass

    import nibabel as nib
    import numpy as np

    from bids_app.config import Config

    @dataclass(frozen=True)
    class EEGOut:
        raw_clean: object

    @dataclass
    class FMRIOut:
        bold_mni: object

    def eeg_stage(run, config, writer):
        raw = mne.io.read_raw_brainvision(run.eeg, preload=True, verbose="error")
        writer.write_raw_brainvision(writer.build_path(
            {**run.entities, "desc": "preproc"}, suffix="eeg", extension=".vhdr",
            datatype="eeg"), raw)
        return EEGOut(raw)

    def fmri_stage(run, config, writer, work_dir):
        img = nib.Nifti1Image(np.ones((5, 6, 7, 8), np.float32), np.diag([3, 3, 3, 1]))
        writer.write_nifti(writer.build_path(
            {**run.entities, "space": "MNI152NLin2009cAsym", "res": "3", "desc": "preproc"},
            suffix="bold", extension=".nii.gz", datatype="func"), img)
        return FMRIOut(img)

    seen = {}

    def report(subject, outcomes, config, writer):
        seen.update({o.run.run_id: o for o in outcomes})
        return writer.write_bytes(f"sub-{subject}.html", b"")

    for name, func in (("eeg", eeg_stage), ("fmri", fmri_stage), ("coupling", None),
                       ("report", report)):
        monkeypatch.setitem(part_wf.STAGES, name, func)
    config = Config().replace("execution", bids_dir=tree, output_dir=tmp_path / "o",
                              participant_label=("01",), skip_bids_validation=True)
    assert part_wf.run_participant_level(config).exit_code == 0
    assert len(seen) == 2
    for outcome in seen.values():
        assert not outcome.eeg.raw_clean.preload  # file-backed, same length
        assert outcome.eeg.raw_clean.n_times == int((2 * 2.0 + 8 * 2.1) * 100)
        assert nib.is_proxy(outcome.fmri.bold_mni.dataobj)
        assert outcome.fmri.bold_mni.shape == (5, 6, 7, 8)


def test_demo_null_reaches_the_simulator_and_a_mismatched_release_is_refused(
        tmp_path, monkeypatch, capsys):
    import json

    import bids_app.simulate.dataset as simulate

    seen = {}

    def fake_simulate(out_dir, *, scale, layout, null, seed, realism):
        seen.update(scale=scale, null=null, seed=seed, realism=realism)
        raise SystemExit(7)  # stop before the conversion: only the wiring is checked

    monkeypatch.setattr(simulate, "simulate_dataset", fake_simulate)
    assert main(["demo", str(tmp_path / "new"), "--null", "--scale", "tiny", "-q"]) == 7
    assert seen == {"scale": "tiny", "null": True, "seed": 0, "realism": "ideal"}
    record = tmp_path / "old" / "raw" / "sourcedata" / "simulation" / "simulation.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"scale": "demo", "seed": 0, "null": False}))
    assert main(["demo", str(tmp_path / "old"), "--null", "-q"]) == 2
    err = capsys.readouterr().err
    assert "simulation.json records a release simulated with {'null': False}" in err
    record.write_text(json.dumps({"scale": "demo", "seed": 0, "null": True}))
    record.with_name("realism.json").write_text(json.dumps({"name": "hard"}))
    assert main(["demo", str(tmp_path / "old"), "--null", "-q"]) == 2
    assert "records a release simulated with {'realism': 'hard'}" in capsys.readouterr().err
