"""The ``eegfmri`` command: BIDS-App arguments, subcommands and dispatch.

::

    eegfmri bids_dir output_dir {participant,group} [options]
    eegfmri simulate OUT [--scale tiny|demo|natview] [--layout natview|bids] [--null]
                     [--realism ideal|hard]
    eegfmri download natview TARGET [--subjects 01 02] [--tasks checker] [--with-stimuli]
    eegfmri convert natview RAW_DIR BIDS_DIR
    eegfmri demo [OUT] [--scale tiny|demo] [--null]

Exit codes: 0 success, 1 a run failed (the others finished), 2 usage or input error.
Input and configuration errors are printed as one sentence on stderr, without traceback.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from bids_app import __version__
from bids_app.config import Config, ConfigError, load_config
from bids_app.errors import InputError, InstallationError
from bids_app.io.entities import LABEL
from bids_app.utils import limit_threads

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
SUBCOMMANDS = ("simulate", "download", "convert", "demo")


# --------------------------------------------------------------------- type functions
def _existing_dir(value: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"directory {value} does not exist")
    return path.absolute()


def _existing_file(value: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"file {value} does not exist")
    return path.absolute()


def _path(value: str) -> Path:
    return Path(value).expanduser().absolute()


def _label_type(prefix: str):
    def parse(value: str) -> str:
        if "/" in value or "\\" in value or ".." in value:
            raise argparse.ArgumentTypeError(f"label {value!r} must not contain '/' or '..'")
        label = value[len(prefix) + 1 :] if value.startswith(prefix + "-") else value
        if not LABEL.fullmatch(label):
            raise argparse.ArgumentTypeError(
                f"label {value!r} must be letters a-z, A-Z and digits only, as in BIDS "
                f"(e.g. 01 or {prefix}-01)"
            )
        return label

    parse.__name__ = f"{prefix} label"
    return parse


def _positive(kind: type):
    def parse(value: str):
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
        if number <= 0:
            raise argparse.ArgumentTypeError(f"{value!r} must be positive")
        return number

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def _filter_file(value: str) -> Path:
    from bids_app.io.bids import load_filter_file

    path = _existing_file(value)
    try:
        load_filter_file(path)
    except InputError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return path


def _masking_shard(value: str) -> str:
    from bids_app.masking.shards import parse_shard

    try:
        return str(parse_shard(value))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _add_verbosity(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more messages (repeat for debug)")
    parser.add_argument("-q", "--quiet", action="count", default=0,
                        help="fewer messages, no progress bars (repeat for errors only)")


def build_parser() -> argparse.ArgumentParser:
    """The BIDS-App parser: ``bids_dir output_dir {participant,group} [options]``."""
    parser = argparse.ArgumentParser(
        prog="eegfmri",
        description="Simultaneous EEG-fMRI BIDS App: EEG and BOLD preprocessing, coupling "
        "and a cognitive basis model. Other commands: eegfmri {simulate,download,convert,"
        "demo} --help.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("bids_dir", type=_existing_dir, help="root of the input BIDS dataset")
    parser.add_argument("output_dir", type=_path, help="where derivatives are written")
    parser.add_argument("analysis_level", choices=("participant", "group"),
                        help="participant: per subject; group: models and masking")
    parser.add_argument("--version", action="version", version=f"eegfmri {__version__}")
    g = parser.add_argument_group("Options for filtering BIDS queries")
    g.add_argument("--participant-label", "--participant_label", nargs="+",
                   type=_label_type("sub"), metavar="LABEL",
                   help="subjects to process (01 or sub-01); default: all")
    g.add_argument("--session-label", nargs="+", type=_label_type("ses"), metavar="LABEL",
                   help="sessions to process (01 or ses-01); default: all")
    g.add_argument("--task-label", nargs="+", type=_label_type("task"), metavar="LABEL",
                   help="tasks to process (e.g. checker tp); default: all")
    g.add_argument("--bids-filter-file", type=_filter_file, metavar="FILE",
                   help='JSON queries, e.g. {"bold": {"session": "01"}, "eeg": {...}}')
    g.add_argument("--skip-bids-validation", action="store_true",
                   help="do not run the BIDS validator on the input")
    g = parser.add_argument_group("Options to handle performance")
    g.add_argument("--nprocs", "--n-cpus", type=_positive(int), metavar="N",
                   help="subjects processed in parallel (processes); default: 1")
    g.add_argument("--omp-nthreads", type=_positive(int), metavar="N",
                   help="threads per process for BLAS/OpenMP/torch; default: 1")
    g.add_argument("--mem", "--mem-gb", type=_positive(float), metavar="GB",
                   help="memory available to the run, in GB; default: 8")
    g.add_argument("-w", "--work-dir", type=_path, metavar="DIR",
                   help="resumable cache (default: OUTPUT_DIR/work): each finished stage "
                        "leaves a checkpoint in DIR/checkpoints/, so rerunning an "
                        "interrupted command resumes it; must lie outside the input "
                        "dataset (or under its derivatives/)")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"),
                   help="where the models train: a GPU when one is visible (auto), cpu or "
                   "cuda")
    g.add_argument("--masking-shard", type=_masking_shard, metavar="K/N",
                   help="group level: compute only shard K of N of the masking into the "
                   "work dir (no output; a plain group run merges the shards); needs the "
                   "models of a --models-only run with the same options")
    g.add_argument("--models-only", action="store_true",
                   help="group level: train the models and stop before the masking")
    g = parser.add_argument_group("Workflow configuration")
    g.add_argument("--fmri-backend", choices=("auto", "builtin", "fmriprep", "derivatives"),
                   help="fMRI preprocessing: auto (fMRIPrep derivatives when --fmriprep-dir "
                   "is given, else built-in), builtin, fmriprep or derivatives")
    g.add_argument("--fmriprep-dir", type=_existing_dir, metavar="DIR",
                   help="fMRIPrep derivatives to reuse")
    g.add_argument("--fs-license-file", type=_existing_file, metavar="FILE",
                   help="FreeSurfer license file, needed by --fmri-backend fmriprep")
    g.add_argument("--config-file", type=_existing_file, metavar="FILE",
                   help="TOML settings (see the docs); command-line options win")
    g.add_argument("--random-seed", type=int, metavar="SEED",
                   help="seed of every random step; the same seed gives the same outputs")
    g.add_argument("--stimuli-dir", type=_existing_dir, metavar="DIR",
                   help="folder with the stimulus videos")
    g.add_argument("--stimulus-model", type=_existing_file, metavar="FILE",
                   help="weights of a stimulus feature extractor")
    g = parser.add_argument_group("Options for outputs")
    g.add_argument("--reports-only", action="store_true",
                   help="only rebuild the HTML reports from existing outputs")
    _add_verbosity(parser)
    return parser


def build_subcommand_parser() -> argparse.ArgumentParser:
    """Parser of ``simulate``, ``download``, ``convert`` and ``demo``."""
    parser = argparse.ArgumentParser(prog="eegfmri")
    parser.add_argument("--version", action="version", version=f"eegfmri {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("simulate", help="write a synthetic NATVIEW-like dataset")
    p.add_argument("out", type=_path, help="folder to create (must be empty or absent)")
    p.add_argument("--scale", choices=("tiny", "demo", "natview"), default="demo",
                   help="size: tiny (seconds, tests), demo (the demo) or natview (one "
                   "NATVIEW-sized run, benchmarks)")
    p.add_argument("--layout", choices=("natview", "bids"), default="bids",
                   help="bids: a valid BIDS dataset; natview: the raw release as NKI "
                   "distributes it")
    p.add_argument("--null", action="store_true",
                   help="no planted coupling (measures false discoveries)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the simulation")
    p.add_argument("--realism", choices=("ideal", "hard"), default="ideal",
                   help="ideal: artifacts follow the cleaning methods' model (unit tests); "
                   "hard: per-slice gradient waveforms, amplitude changes, a head movement, "
                   "vibration lines, drifting clocks, wrong SliceTiming in the BOLD sidecar, "
                   "variable pulse artifact, jittered electrodes, a head model unlike the "
                   "inverse's, extended non-stationary sources; BOLD with region-specific "
                   "HRFs, spatially smooth (6 mm FWHM) AR(1) and 1/f noise, aliased physiological "
                   "noise, drift, a global signal, "
                   "motion spikes and non-planted signal clusters; movie features with the "
                   "statistics of real films (log-normal shot lengths, 1/f luminance, "
                   "continuous motion) (recorded in sourcedata/simulation/realism.json)")
    p = sub.add_parser("download", help="download (a subset of) a public release")
    p.add_argument("dataset", choices=("natview",), help="public release to download")
    p.add_argument("target", type=_path, help="folder to download into (resumable)")
    p.add_argument("--subjects", nargs="+", type=_label_type("sub"),
                   help="subjects to download (default: all)")
    p.add_argument("--sessions", nargs="+", type=_label_type("ses"),
                   help="sessions to download (default: all)")
    p.add_argument("--tasks", nargs="+", type=_label_type("task"),
                   help="tasks to download (default: all)")
    p.add_argument("--with-stimuli", action="store_true",
                   help="also download the stimulus videos of the movie tasks")
    p.add_argument("--base-url", default=None,
                   help="mirror of the release (default: the public S3 bucket)")
    p.add_argument("--jobs", type=_positive(int), default=4, help="parallel downloads")
    p = sub.add_parser("convert", help="convert a raw release to a valid BIDS dataset")
    p.add_argument("dataset", choices=("natview",), help="layout of the raw release")
    p.add_argument("raw_dir", type=_existing_dir,
                   help="folder of the downloaded (or simulated) raw release")
    p.add_argument("bids_dir", type=_path, help="folder of the BIDS dataset to write")
    p = sub.add_parser("demo", help="simulate a small dataset and run both levels")
    p.add_argument("out", type=_path, nargs="?", default=Path("demo_output").absolute(),
                   help="folder of the demo (simulated data, derivatives, reports); "
                   "default: ./demo_output")
    p.add_argument("--scale", choices=("tiny", "demo"), default="demo",
                   help="size of the simulated dataset: tiny (seconds) or demo (minutes)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the simulation and of the run")
    p.add_argument("--config-file", type=_existing_file, metavar="FILE",
                   help="TOML settings for the demo's run (e.g. fewer training epochs)")
    p.add_argument("--null", action="store_true",
                   help="simulate with every planted link removed (recorded in "
                   "sourcedata/simulation): a correct run annotates nothing")
    for p in sub.choices.values():
        _add_verbosity(p)
    return parser


def build_config(args: argparse.Namespace) -> Config:
    """Defaults <- ``--config-file`` (TOML) <- command-line options."""
    config = load_config(args.config_file)
    execution = {
        "bids_dir": args.bids_dir.absolute(),
        "output_dir": args.output_dir.absolute(),
        "analysis_level": args.analysis_level,
        "verbosity": args.verbose - args.quiet,
        "skip_bids_validation": args.skip_bids_validation or None,
        "reports_only": args.reports_only or None,
    }
    optional = {
        "participant_label": "participant_label", "session_label": "session_label",
        "task_label": "task_label", "bids_filter_file": "bids_filter_file",
        "work_dir": "work_dir", "nprocs": "nprocs", "omp_nthreads": "omp_nthreads",
        "mem": "mem_gb", "random_seed": "random_seed", "device": "device",
        "stimuli_dir": "stimuli_dir", "stimulus_model": "stimulus_model",
    }
    for arg, key in optional.items():
        value = getattr(args, arg)
        if value is not None:
            execution[key] = tuple(value) if isinstance(value, list) else value
    if (args.masking_shard or args.models_only) and args.analysis_level != "group":
        raise InputError("Options --masking-shard and --models-only belong to the group "
                         "level; run them as 'eegfmri BIDS_DIR OUTPUT_DIR group ...'.")
    if args.masking_shard and args.models_only:
        raise InputError("Options --masking-shard and --models-only exclude each other: "
                         "train with --models-only first, then run the masking shards.")
    execution["masking_shard"] = args.masking_shard
    execution["models_only"] = args.models_only or None
    execution = {k: v for k, v in execution.items() if v is not None}
    if "work_dir" not in execution and config.execution.work_dir is None:
        execution["work_dir"] = args.output_dir.absolute() / "work"
    config = config.replace("execution", **execution)
    fmri = {"backend": args.fmri_backend, "fmriprep_dir": args.fmriprep_dir,
            "fs_license_file": args.fs_license_file}
    fmri = {k: v for k, v in fmri.items() if v is not None}
    if fmri:
        config = config.replace("fmri", **fmri)
    return config


def run_bids_app(args: argparse.Namespace) -> int:
    """Participant or group level from parsed arguments; returns the exit code."""
    from bids_app.workflows.run import check_paths, execute

    config = build_config(args)
    check_paths(config)
    if args.omp_nthreads is not None:
        limit_threads(config.execution.omp_nthreads)
    return execute(config).exit_code


def _subcommand(argv: Sequence[str]) -> int:
    """Run ``simulate``, ``download``, ``convert`` or ``demo``."""
    from bids_app.utils import logging_to

    args = build_subcommand_parser().parse_args(argv)
    with logging_to(None, args.verbose - args.quiet):
        if args.command == "simulate":
            from bids_app.simulate.dataset import simulate_dataset

            if args.out.exists() and any(args.out.iterdir()):
                raise InputError(f"Simulation folder {args.out} is not empty; choose a new "
                                 "folder.")
            path = simulate_dataset(args.out, scale=args.scale, layout=args.layout,
                                    null=args.null, seed=args.seed, realism=args.realism)
            print(f"Simulated {args.scale} dataset ({args.layout} layout, {args.realism} "
                  f"realism) in {path}")
            return EXIT_OK
        if args.command == "download":
            from bids_app.natview.download import download_natview

            options = {"base_url": args.base_url} if args.base_url else {}
            report = download_natview(
                args.target, subjects=tuple(args.subjects or ()),
                sessions=tuple(args.sessions or ()), tasks=tuple(args.tasks or ()),
                with_stimuli=args.with_stimuli, jobs=args.jobs, **options,
            )
            for path, reason in getattr(report, "failed", []):
                print(f"eegfmri: download of {path} failed: {reason}", file=sys.stderr)
            print(report.summary())
            return EXIT_OK if report.ok else EXIT_FAILED
        if args.command == "convert":
            from bids_app.natview.convert import convert_natview

            if args.bids_dir.resolve() == args.raw_dir.resolve():
                raise InputError(f"BIDS_DIR {args.bids_dir} must differ from RAW_DIR.")
            report = convert_natview(args.raw_dir, args.bids_dir)
            print(report.table())
            print(report.summary())
            return EXIT_OK
        from bids_app.workflows.demo import run_demo

        return run_demo(args.out, scale=args.scale, seed=args.seed, null=args.null,
                        verbosity=args.verbose - args.quiet, config_file=args.config_file)


class Terminated(BaseException):  # noqa: N818 - mirrors KeyboardInterrupt
    """SIGTERM (e.g. SLURM at the time limit) as an exception, so cleanup code runs."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``eegfmri``; returns the exit code.

    Parameters
    ----------
    argv : sequence of str | None
        Arguments without the program name (``sys.argv[1:]`` when None).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    previous_handler = None
    if threading.current_thread() is threading.main_thread():
        previous_handler = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        if argv and argv[0] in SUBCOMMANDS:
            return _subcommand(argv)
        args = build_parser().parse_args(argv)
        return run_bids_app(args)
    except SystemExit as exc:  # argparse: --help/--version (0) or usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except (InputError, ConfigError) as err:
        print(f"eegfmri: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except InstallationError as err:
        print(f"eegfmri: error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except ModuleNotFoundError as err:
        if err.name and err.name.startswith("bids_app"):
            print(f"eegfmri: error: module {err.name} is not available in this "
                  "installation.", file=sys.stderr)
            return EXIT_FAILED
        raise
    except (KeyboardInterrupt, Terminated) as err:
        signum = getattr(err, "signum", signal.SIGINT)
        print(f"eegfmri: stopped by {signal.Signals(signum).name}; finished outputs are "
              "complete and no partial file was left; rerun the same command to go on.",
              file=sys.stderr)
        return 128 + int(signum)
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
