# eegfmri BIDS App image.
#
# The base image is a build argument. By default it is the official fMRIPrep image, so
# that `--fmri-backend fmriprep` finds fMRIPrep, FreeSurfer, ANTs, FSL and the pre-fetched
# TemplateFlow templates inside the container. Any Debian/Ubuntu base with Python >= 3.11
# and its venv module works as well (BASE_PYTHON names that interpreter); `make image`
# builds on such a base, made offline with mmdebstrap, where the fMRIPrep image cannot be
# pulled (scripts/build_image.sh). eegfmri lives in its own virtual environment
# (/opt/eegfmri), so its dependencies never change the base image's Python.
#
#   docker build -t eegfmri/eegfmri:0.1.0 .                           # CPU torch (default)
#   docker build --build-arg TORCH_VARIANT=cu128 -t eegfmri/eegfmri:0.1.0-cuda .
#   docker build --build-arg BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm \
#       --build-arg BASE_PYTHON=/usr/local/bin/python3.11 -t eegfmri/eegfmri:0.1.0-slim .
#   docker run --rm -v /data/bids:/data:ro -v /data/out:/out eegfmri/eegfmri:0.1.0 \
#       /data /out participant --participant-label 01
ARG BASE_IMAGE=docker.io/nipreps/fmriprep:24.1.1
FROM ${BASE_IMAGE}

ARG BASE_IMAGE=docker.io/nipreps/fmriprep:24.1.1
# Python (>= 3.11, with its venv module) of the base image; the default is fMRIPrep's.
ARG BASE_PYTHON=/opt/conda/envs/fmriprep/bin/python
# torch is installed first, as the exact local version TORCH_VERSION+TORCH_VARIANT, so pip
# can never pull a CUDA build into a CPU image (PyPI's Linux torch wheel is the CUDA one).
# TORCH_VARIANT is the PyTorch wheel index suffix: cpu, or a CUDA tag such as cu128.
# TORCH_FIND_LINKS: optional folder of wheels (e.g. mounted with `podman build -v`) that
# holds the torch wheel when the PyTorch index cannot be reached (offline builds).
ARG TORCH_VERSION=2.13.0
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}
ARG TORCH_FIND_LINKS=""
# BUILD_CA_BUNDLE: optional CA bundle that pip trusts during the build, for networks
# behind a TLS-inspecting proxy (mounted at build time, e.g. `podman build -v`; it is not
# copied into the image).
ARG BUILD_CA_BUNDLE=""

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

RUN if [ -n "${BUILD_CA_BUNDLE}" ]; then export PIP_CERT="${BUILD_CA_BUNDLE}"; fi \
    && "${BASE_PYTHON}" -m venv /opt/eegfmri \
    && pip install --no-cache-dir "pip==24.3.1" "setuptools==80.9.0" "wheel==0.45.1" \
    && PIP_FIND_LINKS="${TORCH_FIND_LINKS}" pip install --no-cache-dir \
        "torch==${TORCH_VERSION}+${TORCH_VARIANT}" --index-url "${TORCH_INDEX_URL}"

# Only what the package build needs (see .dockerignore): metadata first, then the code.
COPY setup.cfg pyproject.toml README.md /src/eegfmri/
COPY bids_app /src/eegfmri/bids_app
# The local source tree is the package being built, so it has no version pin to give;
# its dependencies are pinned by ranges in setup.cfg (torch is already installed above).
# hadolint ignore=DL3013
RUN if [ -n "${BUILD_CA_BUNDLE}" ]; then export PIP_CERT="${BUILD_CA_BUNDLE}"; fi \
    && pip install --no-cache-dir /src/eegfmri \
    && rm -rf /src \
    && eegfmri --version

# Non-root user; HPC runs usually override the uid (docker -u / singularity) anyway, so
# the home directory is world-writable for matplotlib/MNE caches.
RUN useradd --no-log-init --create-home --shell /bin/bash --uid 10001 eegfmri \
    && chmod 0777 /home/eegfmri
USER 10001
WORKDIR /home/eegfmri

# Declared last: a new date or commit must not invalidate the cached layers above.
ARG VERSION=0.1.0
ARG BUILD_DATE=unknown
ARG VCS_REF=unknown
LABEL org.opencontainers.image.title="eegfmri" \
      org.opencontainers.image.description="BIDS App for simultaneous EEG-fMRI: artifact removal, fMRI preprocessing, EEG-fMRI coupling, VAE cognitive basis and masking" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/eegfmri/eegfmri" \
      org.opencontainers.image.documentation="https://github.com/eegfmri/eegfmri/tree/main/docs" \
      org.opencontainers.image.base.name="${BASE_IMAGE}" \
      org.bids-apps.version="${VERSION}" \
      org.bids-apps.analysis-levels="participant group" \
      org.bids-apps.torch="${TORCH_VERSION}+${TORCH_VARIANT}"

ENTRYPOINT ["/opt/eegfmri/bin/eegfmri"]
CMD ["--help"]
