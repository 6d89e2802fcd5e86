# regsearch GPU worker image: pulls trials of runnable studies from the shared database and trains
# them on the GPU that docker-compose.yml reserves for each worker container.
#
# Built on the official TensorFlow GPU image, pinned: its CUDA/cuDNN match its TensorFlow build,
# and the version equals the one the test suite runs (tensorflow 2.21 / Keras 3). pip keeps the
# image's TensorFlow because it satisfies pyproject's `tensorflow>=...` requirement.
# Build from the repository root:  docker build -f docker/worker.Dockerfile -t regsearch-worker .
ARG TENSORFLOW_VERSION=2.21.0
FROM tensorflow/tensorflow:${TENSORFLOW_VERSION}-gpu

# TF_FORCE_GPU_ALLOW_GROWTH: GPU memory grows on demand instead of being taken whole at start, so two
# workers can share one card when asked (compose and the Kubernetes manifests set it explicitly too).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    TF_FORCE_GPU_ALLOW_GROWTH=true

WORKDIR /app

# Same pinned service dependencies as the API image.
COPY docker/requirements-api.txt docker/requirements-api.txt
RUN python3 -m pip install -r docker/requirements-api.txt

COPY pyproject.toml README.md ./
COPY service service
COPY trainer trainer
COPY docker/entrypoint.sh docker/entrypoint.sh
# --no-deps keeps the image's CUDA-matched TensorFlow; `pip check` fails the build if anything
# pyproject.toml asks for (tensorflow, keras, ...) is missing or at a conflicting version.
RUN python3 -m pip install --no-deps . \
 && python3 -m pip check \
 && python3 -c "import tensorflow as tf, keras; print('tensorflow', tf.__version__, 'keras', keras.__version__)"

# Run as an unprivileged user (the same uid as the API image, which the Kubernetes manifests pin);
# ~/.keras is where keras.datasets caches CIFAR-10 when REGSEARCH_DATA_DIR is unset; /artifacts is the
# shared model store's mount point (owned by the user so that a fresh named volume is writable).
RUN groupadd --gid 10001 regsearch \
 && useradd --create-home --uid 10001 --gid 10001 regsearch \
 && mkdir -p /home/regsearch/.keras /artifacts \
 && chown regsearch:regsearch /home/regsearch/.keras /artifacts
USER 10001:10001

ENTRYPOINT ["/app/docker/entrypoint.sh"]
CMD ["regsearch", "worker"]
