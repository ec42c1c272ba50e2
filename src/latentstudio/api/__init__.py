"""The HTTP API: ``create_app(settings)``, the native ``/api/v1``, the A1111 ``/sdapi/v1``, health."""

from latentstudio.api.app import create_app
from latentstudio.api.state import Services, ServicesDep, build_services, get_services

__all__ = ["Services", "ServicesDep", "build_services", "create_app", "get_services"]
