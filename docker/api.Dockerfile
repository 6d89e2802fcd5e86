# regsearch API image: FastAPI server, Alembic migrations and the Optuna dashboard.
#
# The API process never trains, so the image carries no TensorFlow: it installs the project with
# --no-deps plus docker/requirements-api.txt (pyproject's dependencies minus the training stack).
# Build from the repository root:  docker build -f docker/api.Dockerfile -t regsearch-api .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first: this layer is reused until requirements-api.txt changes.
COPY docker/requirements-api.txt docker/requirements-api.txt
RUN pip install -r docker/requirements-api.txt

COPY pyproject.toml README.md ./
COPY service service
COPY trainer trainer
COPY docker/entrypoint.sh docker/entrypoint.sh
RUN pip install --no-deps . \
 && python -c "import service.cli, trainer, sys; assert 'tensorflow' not in sys.modules"

# Run as an unprivileged user: the API needs no write access to the image.
# The uid/gid are numeric so that Kubernetes' runAsNonRoot can check them (deploy/kubernetes/ pins 10001).
# /artifacts is where docker-compose.yml mounts the shared model store (REGSEARCH_ARTIFACT_URL): a fresh
# named volume takes this directory's owner, so uid 10001 can write it (the same in the worker image).
RUN groupadd --gid 10001 regsearch \
 && useradd --create-home --uid 10001 --gid 10001 regsearch \
 && mkdir -p /artifacts \
 && chown regsearch:regsearch /artifacts
USER 10001:10001

EXPOSE 8000 8080
ENTRYPOINT ["/app/docker/entrypoint.sh"]
CMD ["regsearch", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "0", "--no-dashboard"]
