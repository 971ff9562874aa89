"""``eegfmri demo`` end to end on the tiny simulator scale; the outputs must validate."""

from __future__ import annotations

import json
import re

import pytest

from bids_app.cli import main
from bids_app.io.atomic import leftover_temporaries
from bids_app.io.validate import validate_derivatives

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_demo_tiny_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    fast = tmp_path / "fast.toml"  # fewer epochs and null samples: the test checks wiring
    fast.write_text("[model]\nepochs = 4\npatience = 2\n[masking]\nn_null = 20\n")
    code = main(["demo", str(out), "--scale", "tiny", "-q", "--config-file", str(fast)])
    printed = capsys.readouterr()
    assert "Traceback" not in printed.err
    assert code == 0, printed.out + printed.err
    assert "eegfmri demo finished" in printed.out
    assert re.search(r"participant level: stages run: .*eeg", printed.out)
    derivatives = out / "derivatives"
    description = json.loads((derivatives / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert list(derivatives.glob("sub-*/**/*_desc-preproc_eeg.vhdr"))
    assert list(derivatives.glob("sub-*/**/*_desc-preproc_bold.nii.gz"))
    assert (derivatives / "sub-01.html").exists() and (derivatives / "group.html").exists()
    assert "group level: stages run: group_report, masking, models" in printed.out
    assert leftover_temporaries(derivatives) == []
    result = validate_derivatives(derivatives)
    assert result.errors == [], "\n".join(result.summary())
