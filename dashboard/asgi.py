"""The ASGI application: Django for HTTP, Channels for websockets: authenticated by an API token
(dashboard/tokens/websocket.py), or by the session and same-origin only."""
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
django_asgi_app = get_asgi_application()  # before importing consumers: they import models

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from dashboard.env import env_bool  # noqa: E402
from dashboard.tokens.websocket import TokenOrSession  # noqa: E402
from training.engine.libraries import import_up_front  # noqa: E402
from training.routing import websocket_urlpatterns  # noqa: E402
from training.workers.heartbeat import start_web_lost_run_check  # noqa: E402

import_up_front()  # before the first request: two request threads must not import transformers at once

application = ProtocolTypeRouter({
    "http": django_asgi_app,
    "websocket": TokenOrSession(
        token_app=URLRouter(websocket_urlpatterns),
        session_app=AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    ),
})

# The web process checks for lost runs itself (the test suite turns it off: its own test runs would be marked).
if env_bool("TUNEBOARD_WEB_LOST_RUN_CHECK", True):
    start_web_lost_run_check()
