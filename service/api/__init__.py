"""The HTTP API (FastAPI): ``create_app`` builds it; ``regsearch serve`` runs it under uvicorn."""

from service.api.main import create_app

__all__ = ["create_app"]
