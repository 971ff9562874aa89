# eegfmri BIDS App image.
#
# Built on the official fMRIPrep image so that `--fmri-backend fmriprep` finds fMRIPrep,
# FreeSurfer, ANTs, FSL and the pre-fetched TemplateFlow templates inside the container.
# eegfmri lives in its own virtual environment (/opt/eegfmri), created from the image's
# Python 3.11, so its dependencies never change fMRIPrep's conda environment.
#
#   docker build -t eegfmri/eegfmri:0.1.0 .                           # CPU torch (default)
#   docker build --build-arg TORCH_VARIANT=cu128 -t eegfmri/eegfmri:0.1.0-cuda .
#   docker run --rm -v /data/bids:/data:ro -v /data/out:/out eegfmri/eegfmri:0.1.0 \
#       /data /out participant --participant-label 01
ARG FMRIPREP_VERSION=24.1.1
FROM nipreps/fmriprep:${FMRIPREP_VERSION}

ARG FMRIPREP_VERSION=24.1.1
# torch is installed first, from the PyTorch wheel index, so pip never pulls a CUDA build
# into a CPU image. TORCH_VARIANT is the index suffix: cpu, or a CUDA tag such as cu128.
ARG TORCH_VERSION=2.13.0
ARG TORCH_VARIANT=cpu
ARG VERSION=0.1.0
ARG BUILD_DATE=unknown
ARG VCS_REF=unknown

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# One thread per process by default: eegfmri parallelises over subjects/runs (--nprocs)
# and --omp-nthreads raises this per process; oversubscription on shared HPC nodes is
# the usual cause of slow runs.
ENV VIRTUAL_ENV=/opt/eegfmri \
    PATH=/opt/eegfmri/bin:${PATH} \
    OMP_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    OPENBLAS_NUM_THREADS=1 \
    NUMEXPR_NUM_THREADS=1 \
    MPLBACKEND=Agg \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONNOUSERSITE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/home/eegfmri

RUN /opt/conda/envs/fmriprep/bin/python -m venv /opt/eegfmri \
    && pip install --no-cache-dir "pip==24.3.1" "setuptools==75.6.0" "wheel==0.45.1" \
    && pip install --no-cache-dir "torch==${TORCH_VERSION}" \
        --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}"

# Only what the package build needs (see .dockerignore): metadata first, then the code.
COPY setup.cfg pyproject.toml README.md /src/eegfmri/
COPY bids_app /src/eegfmri/bids_app
# The local source tree is the package being built, so it has no version pin to give;
# its dependencies are pinned by ranges in setup.cfg (torch is already installed above).
# hadolint ignore=DL3013
RUN pip install --no-cache-dir /src/eegfmri \
    && rm -rf /src/eegfmri \
    && eegfmri --version

# Non-root user; HPC runs usually override the uid (docker -u / singularity) anyway, so
# the home directory is world-writable for matplotlib/MNE caches.
RUN useradd --no-log-init --create-home --shell /bin/bash --uid 10001 eegfmri \
    && chmod 0777 /home/eegfmri
USER 10001
WORKDIR /home/eegfmri

LABEL org.opencontainers.image.title="eegfmri" \
      org.opencontainers.image.description="BIDS App for simultaneous EEG-fMRI: artifact removal, fMRI preprocessing, EEG-fMRI coupling, VAE cognitive basis and masking" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/eegfmri/eegfmri" \
      org.opencontainers.image.documentation="https://github.com/eegfmri/eegfmri/tree/main/docs" \
      org.opencontainers.image.base.name="docker.io/nipreps/fmriprep:${FMRIPREP_VERSION}" \
      org.bids-apps.version="${VERSION}" \
      org.bids-apps.analysis-levels="participant group" \
      org.bids-apps.fmriprep-version="${FMRIPREP_VERSION}" \
      org.bids-apps.torch="${TORCH_VERSION}+${TORCH_VARIANT}"

ENTRYPOINT ["/opt/eegfmri/bin/eegfmri"]
CMD ["--help"]
