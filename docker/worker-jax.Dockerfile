# regsearch GPU worker image on Keras' JAX backend: the same worker as docker/worker.Dockerfile, without
# TensorFlow. JAX's CUDA 12 wheels carry their own CUDA libraries; the host needs the NVIDIA driver and
# the NVIDIA container toolkit only. The versions equal the ones the test suite runs the trainer on
# (tests/scale/test_scale_compose_drift.py compares them with the installed jax and keras).
# Build from the repository root:  docker build -f docker/worker-jax.Dockerfile -t regsearch-worker-jax .
FROM python:3.11-slim

ARG JAX_VERSION=0.10.2
ARG KERAS_VERSION=3.15.1

# KERAS_BACKEND selects the backend at Keras' first import. REGSEARCH_GPU_MEMORY_FRACTION (docs/settings.md)
# caps each worker's share of the card, so that several workers can share one.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    KERAS_BACKEND=jax

WORKDIR /app

# Same pinned service dependencies as the API image, then the training stack.
COPY docker/requirements-api.txt docker/requirements-api.txt
RUN pip install -r docker/requirements-api.txt \
 && pip install "jax[cuda12]==${JAX_VERSION}" "keras==${KERAS_VERSION}"

COPY pyproject.toml README.md ./
COPY service service
COPY trainer trainer
COPY docker/entrypoint.sh docker/entrypoint.sh
# --no-deps: pyproject's tensorflow (the default backend's) is left out on purpose, so no `pip check`;
# the import check below proves the worker's whole path loads on JAX without it.
RUN pip install --no-deps . \
 && python -c "import sys, keras, jax, service.worker, trainer._train; assert keras.backend.backend() == 'jax'; assert 'tensorflow' not in sys.modules; print('jax', jax.__version__, 'keras', keras.__version__)"

# Run as an unprivileged user (the same uid as the other images, which the Kubernetes manifests pin);
# ~/.keras is where keras.datasets caches CIFAR-10 when REGSEARCH_DATA_DIR is unset; /artifacts is the
# shared model store's mount point (owned by the user so that a fresh named volume is writable).
RUN groupadd --gid 10001 regsearch \
 && useradd --create-home --uid 10001 --gid 10001 regsearch \
 && mkdir -p /home/regsearch/.keras /artifacts \
 && chown regsearch:regsearch /home/regsearch/.keras /artifacts
USER 10001:10001

ENTRYPOINT ["/app/docker/entrypoint.sh"]
CMD ["regsearch", "worker"]
