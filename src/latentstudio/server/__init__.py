"""The composition root: ``build_app(settings)`` is the HTTP API with the web UI mounted at ``/`` and the UI's
backend wired to the server's services. The ``serve`` command (and tests that serve) import it; ``api`` and
``ui`` know nothing of each other or of this package (DESIGN "Imports flow one way").
"""

from latentstudio.server.app import build_app, credentials_problem

__all__ = ["build_app", "credentials_problem"]
