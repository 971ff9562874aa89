"""Configuration: TOML round trip, precedence defaults <- TOML <- CLI, errors -> exit 2."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))
from bidstree import make_bids_tree  # noqa: E402

from bids_app.cli import build_config, build_parser, main  # noqa: E402
from bids_app.config import Config, ConfigError, load_config  # noqa: E402
from bids_app.workflows import participant as part_wf  # noqa: E402


def test_toml_round_trip_of_every_section(tmp_path):
    config = (
        Config()
        .replace("execution", bids_dir=tmp_path / "bids", participant_label=("01", "02"),
                 random_seed=7, mem_gb=3.5)
        .replace("eeg", ica=False, ica_reject_labels=("eye blink",), gradient_window=20,
                 gradient_obs_components=3)
        .replace("fmri", fwhm=4.0, fmriprep_dir=tmp_path / "fmriprep")
        .replace("source", bands=(("alpha", 8.0, 12.0), ("beta", 13.0, 30.0)))
        .replace("model", latent_dim=8)
    )
    path = tmp_path / "c.toml"
    config.to_toml(path)
    assert load_config(path) == config
    assert load_config(path).source.bands[0] == ("alpha", 8.0, 12.0)


def test_cli_overrides_toml_overrides_defaults(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("[execution]\nrandom_seed = 5\nnprocs = 3\n[fmri]\nfwhm = 4.0\n"
                    "backend = 'builtin'\n")
    args = build_parser().parse_args([str(tmp_path), str(tmp_path / "out"), "participant",
                                      "--config-file", str(toml), "--random-seed", "9",
                                      "--mem", "2", "--fmri-backend", "derivatives"])
    config = build_config(args)
    assert config.execution.random_seed == 9  # CLI wins over TOML
    assert config.execution.nprocs == 3  # TOML wins over the default (1)
    assert config.execution.mem_gb == 2.0
    assert config.fmri.fwhm == 4.0 and config.fmri.backend == "derivatives"
    assert config.eeg == Config().eeg  # untouched sections keep defaults
    assert config.execution.work_dir == (tmp_path / "out" / "work").absolute()


def test_saved_config_reproduces_the_run(tmp_path, monkeypatch):
    tree = make_bids_tree(tmp_path / "ds")
    for stage in ("eeg", "fmri", "coupling", "report"):
        monkeypatch.setitem(part_wf.STAGES, stage, None)
    argv = [str(tree), str(tmp_path / "out"), "participant", "-q", "--skip-bids-validation",
            "--random-seed", "11", "--task-label", "checker"]
    assert main(argv) == 0
    saved = list((tmp_path / "out" / "logs").glob("config-*.toml"))
    assert len(saved) == 1
    expected = build_config(build_parser().parse_args(argv))
    assert load_config(saved[0]) == expected
    # Re-running from the saved file gives the same configuration.
    again = build_config(build_parser().parse_args(
        [str(tree), str(tmp_path / "out"), "participant", "-q", "--config-file",
         str(saved[0])]))
    assert again == expected


@pytest.mark.parametrize("text, message", [
    ("[eeg\n", "is not valid TOML"),
    ("[nope]\nx = 1\n", "unknown section [nope]"),
    ("[eeg]\nica = 'yes'\n", "must be true or false"),
    ("[fmri]\nfwhmm = 3.0\n", "Unknown setting 'fwhmm'"),
])
def test_bad_config_file_exit_2(tmp_path, text, message, capsys):
    toml = tmp_path / "bad.toml"
    toml.write_text(text)
    code = main([str(tmp_path), str(tmp_path / "out"), "participant", "--config-file",
                 str(toml)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    with pytest.raises(ConfigError):
        load_config(toml)
