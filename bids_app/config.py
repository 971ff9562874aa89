"""Every setting of eegfmri in one frozen dataclass.

The configuration has one section per stage (``execution``, ``eeg``, ``fmri``, ``source``,
``coupling``, ``model``, ``masking``). It is built from defaults, then a TOML file
(``--config-file``), then command-line options, in that order, and the resolved result is
written to ``output_dir/logs/`` so a run can be reproduced with ``--config-file``.

Example TOML::

    [eeg]
    resample_sfreq = 250.0
    ica_threshold = 0.8

    [fmri]
    fwhm = 6.0
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w


class ConfigError(ValueError):
    """A configuration value or file that cannot be used (one sentence, names the key)."""


@dataclass(frozen=True)
class ExecutionConfig:
    """Where data come from, where results go, and how the run is executed."""

    bids_dir: Path | None = None
    output_dir: Path | None = None
    analysis_level: str = "participant"
    participant_label: tuple[str, ...] = ()
    session_label: tuple[str, ...] = ()
    task_label: tuple[str, ...] = ()
    bids_filter_file: Path | None = None
    skip_bids_validation: bool = False
    work_dir: Path | None = None
    nprocs: int = 1
    omp_nthreads: int = 1
    mem_gb: float = 8.0
    random_seed: int = 0
    device: str = "auto"
    reports_only: bool = False
    stimuli_dir: Path | None = None
    stimulus_model: Path | None = None
    verbosity: int = 0
    # group level: "K/N" computes masking shard K of N into the work dir ("": no shard);
    # models_only trains the models and stops before masking
    masking_shard: str = ""
    models_only: bool = False


@dataclass(frozen=True)
class EEGConfig:
    """In-scanner EEG cleaning: gradient, pulse (BCG) and the post-MR chain."""

    volume_marker: str = "R128"
    ecg_channel: str = "ECG"
    eog_channels: tuple[str, ...] = ("EOGL", "EOGU")
    montage: str = "standard_1005"
    # gradient artifact (FASTR-class)
    gradient: bool = True
    gradient_window: int = 60  # slice artifacts on each side, Hann-weighted
    gradient_upsample: int = 10
    gradient_obs_components: str | int = "auto"
    gradient_lowpass: float = 70.0
    gradient_anc: bool = False  # adaptive noise cancellation of the residual (Allen 2000)
    # pulse / ballistocardiogram artifact
    bcg: bool = True
    bcg_obs_components: int = 4
    bcg_window: int = 30
    # post-MR chain
    resample_sfreq: float = 250.0
    l_freq: float = 0.3
    h_freq: float = 50.0
    line_freq: float = 60.0
    notch: bool = True
    bad_channels: bool = True
    burst_repair: bool = True
    burst_cutoff: float = 20.0
    ica: bool = True
    ica_n_components: float | int = 0.99
    ica_max_components: int = 30  # cap on ica_n_components (0: no cap)
    ica_threshold: float = 0.8
    ica_reject_labels: tuple[str, ...] = ("eye blink", "muscle artifact")
    interpolate_bads: bool = True
    average_reference: bool = True


@dataclass(frozen=True)
class FMRIConfig:
    """fMRI preprocessing: backend choice and built-in path parameters."""

    backend: str = "auto"
    fmriprep_dir: Path | None = None
    fs_license_file: Path | None = None
    fs_no_reconall: bool = True
    template: str = "MNI152NLin2009cAsym"
    resolution_mm: float = 3.0
    fwhm: float = 6.0
    slice_time_ref: float = 0.5
    n_acompcor: int = 5
    fd_threshold_mm: float = 0.5
    dvars_threshold: float = 1.5
    nonlinear: bool = True
    registration_resolution_mm: float = 3.0


@dataclass(frozen=True)
class SourceConfig:
    """EEG source imaging on the fMRI grid."""

    method: str = "eLORETA"
    bands: tuple[tuple[str, float, float], ...] = (
        ("delta", 1.0, 4.0),
        ("theta", 4.0, 8.0),
        ("alpha", 8.0, 13.0),
        ("beta", 13.0, 30.0),
        ("gamma", 30.0, 45.0),
    )
    snr: float = 3.0
    subjects_dir: Path | None = None
    source_spacing_mm: float = 10.0
    noise_cov: str = "diagonal"
    noise_cov_baseline_s: tuple[float, ...] = ()
    # "aperiodic": band power above each source's fitted 1/f background (docs/methods.md);
    # "none": total band power
    background: str = "aperiodic"


@dataclass(frozen=True)
class CouplingConfig:
    """EEG <-> fMRI coupling statistics."""

    # canonical HRF + temporal + dispersion derivatives; the test is the largest t over the
    # basis projections of double-gamma HRFs peaking at these times (s); empty: F test of
    # the basis columns
    hrf_model: str = "spm + derivative + dispersion"
    hrf_shape_peaks_s: tuple[float, ...] = (4.0, 5.0, 6.0, 7.0, 8.0, 9.0)
    high_pass_hz: float = 0.01
    fdr_q: float = 0.05
    # AR(p) prewhitening, p <= max_ar_order chosen per run by AIC (bias-corrected
    # autocorrelations, shrunk towards their mean over voxels)
    max_ar_order: int = 4
    # within-run circular shifts of the EEG power that form the null of the p-values
    n_shifts: int = 20
    min_shift_s: float = 30.0
    n_null_voxels: int = 10000
    # a trailing "*" picks every column with that prefix ("motion_outlier*": one spike
    # column per outlier volume, dropped with a warning when they would leave < 2 residual
    # degrees of freedom; not a default: with AR(p > 1) prewhitening they made the
    # circular-shift null heavy-tailed on hard simulated data, see docs/methods.md)
    confounds: tuple[str, ...] = (
        "trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z", "csf", "white_matter",
        "global_signal",
    )
    n_peaks: int = 5


@dataclass(frozen=True)
class ModelConfig:
    """Windows, stimulus features and the two VAEs."""

    eeg_window_s: float = 8.4
    eeg_window_sfreq: float = 25.0
    latent_dim: int = 16
    hidden_dim: int = 256
    fusion: str = "poe"
    beta: float = 1.0
    cross_weight: float = 0.3
    # VAE-1 starts from a PCA of the training windows ("block": per modality, latent
    # dimensions owned by one modality; "joint": PCA of the concatenated windows) and
    # training only adds what the experts in `cross_experts` ("eeg", "fmri", comma-separated,
    # "" for none, "all" for unrestricted residuals) say about the other modality
    pca_init: bool = True
    pca_mode: str = "block"
    expert_precision: float = 100.0
    # (voxel masking needs "fmri" here: without it a masked voxel cannot move VAE-1's
    # EEG prediction and no voxel can be annotated)
    cross_experts: str = "eeg,fmri"
    # those experts read the scores of their modality's leading principal components
    # (0: random projections of the whole window)
    expert_inputs: int = 16
    # the EEG's own reconstruction gets non-linear paths (EEG expert residual and an EEG
    # decoder residual of this rank in the leading EEG principal components; 0: none)
    eeg_decoder_rank: int = 16
    # after training, temper the experts' learned confidence on the validation runs
    calibrate_experts: bool = True
    stimulus_beta: float = 0.01
    epochs: int = 60
    batch_size: int = 64
    # on a GPU: global batch size (learning rate scaled by the square root of the ratio)
    # and how windows reach it ("auto": resident in float16 when they fit, else prefetch)
    gpu_batch_size: int = 256
    feed: str = "auto"
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 8
    split_by: str = "run"
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    stimulus_fps: float = 10.0
    # voxel size (mm) of the group windows' fMRI (block average inside the group mask);
    # 0 or at most the derivatives' voxel size keeps their grid
    fmri_resolution_mm: float = 6.0


@dataclass(frozen=True)
class MaskingConfig:
    """Occlusion of EEG timestamps and fMRI voxels after training."""

    baseline: str = "zero"
    measure: str = "smd"
    n_null: int = 200
    fdr_q: float = 0.05
    batch_size: int = 4096
    # "single": posterior of the masked modality alone (cross-modal prediction);
    # "joint": both modalities in the posterior.
    context: str = "single"
    n_boot: int = 200
    # "test": held-out windows (valid tests); "all": every window
    windows: str = "test"
    # "gaussian": normal tail of the null-standardised statistic; "permutation": empirical
    pvalue: str = "gaussian"
    # rows of desc-vaemask_effects: "significant" (latent and stimulus heads, cross-modal
    # effects with q < fdr_q) or "all" (every EEG timestamp x voxel pair: very large)
    effects_rows: str = "significant"
    # VAE-1 units tested output by output besides the whole-prediction test: "auto" (every
    # unit while units x outputs <= 1e7, else "significant"), "significant" (the units it
    # selects: hierarchical FDR), "all" (every unit: slow and large at NATVIEW size), "none"
    cross_outputs: str = "auto"
    # units per work cell of the masking passes; cells are what --masking-shard deals to
    # processes, each with its own seed, so results do not depend on the number of shards
    cell_units: int = 2048


@dataclass(frozen=True)
class Config:
    """The complete, immutable configuration of one eegfmri run."""

    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    eeg: EEGConfig = field(default_factory=EEGConfig)
    fmri: FMRIConfig = field(default_factory=FMRIConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    coupling: CouplingConfig = field(default_factory=CouplingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)

    def replace(self, section: str, **values: Any) -> Config:
        """Return a copy with ``values`` changed in ``section`` (validated like TOML)."""
        current = getattr(self, section)
        coerced = {key: _coerce(section, current, key, value) for key, value in values.items()}
        return dataclasses.replace(self, **{section: dataclasses.replace(current, **coerced)})

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain-python view (paths as strings, tuples as lists), for sidecars and TOML."""
        return {name: _section_to_dict(getattr(self, name)) for name in SECTIONS}

    def to_toml(self, path: Path) -> None:
        """Write the resolved configuration; ``None`` values are omitted (TOML has no null)."""
        text = tomli_w.dumps(
            {s: {k: v for k, v in d.items() if v is not None} for s, d in self.to_dict().items()}
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)


SECTIONS: tuple[str, ...] = tuple(f.name for f in fields(Config))


def _section_to_dict(section: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(section):
        out[f.name] = _to_plain(getattr(section, f.name))
    return out


def _to_plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_to_plain(v) for v in value]
    return value


def _coerce(section: str, current: Any, key: str, value: Any) -> Any:
    """Convert a TOML/CLI value to the type of the default, or raise ConfigError."""
    names = {f.name: f for f in fields(current)}
    if key not in names:
        raise ConfigError(
            f"Unknown setting '{key}' in section [{section}]; "
            f"known settings: {', '.join(sorted(names))}."
        )
    default = getattr(current, key)
    annotation = str(names[key].type)
    if value is None:
        return None
    if "Path" in annotation:
        return Path(value).expanduser()
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"Setting [{section}] {key} must be true or false, got {value!r}.")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"Setting [{section}] {key} must be a list, got {value!r}.")
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    if isinstance(default, float) and isinstance(value, int | float):
        if "int" in annotation and isinstance(value, int):
            return value
        return float(value)
    if isinstance(default, int) and not isinstance(value, bool) and isinstance(value, int):
        return value
    if isinstance(default, str):
        if "int" in annotation and isinstance(value, int):
            return value
        if isinstance(value, str):
            return value
    raise ConfigError(
        f"Setting [{section}] {key} must be of type {type(default).__name__}, got {value!r}."
    )


def load_config(path: Path | None = None, base: Config | None = None) -> Config:
    """Build a :class:`Config` from defaults and an optional TOML file.

    Parameters
    ----------
    path : Path | None
        TOML file with one table per section (``[eeg]``, ``[fmri]`` ...).
    base : Config | None
        Starting configuration (defaults when None).

    Returns
    -------
    Config
        The merged configuration.

    Raises
    ------
    ConfigError
        When the file cannot be read or holds an unknown section, key or type.
    """
    config = base or Config()
    if path is None:
        return config
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"Config file {path} does not exist.") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"Config file {path} is not valid TOML ({err}).") from None
    for section, values in data.items():
        if section not in SECTIONS:
            raise ConfigError(
                f"Config file {path} has an unknown section [{section}]; "
                f"known sections: {', '.join(SECTIONS)}."
            )
        if not isinstance(values, dict):
            raise ConfigError(f"Config file {path}: [{section}] must be a table.")
        try:
            config = config.replace(section, **values)
        except ConfigError as err:
            raise ConfigError(f"Config file {path}: {err}") from None
    return config
