"""A minimal Django project (settings, urls and views in one module) serving a
gosse stream through gosse.contrib.django, with GZipMiddleware on."""
import django
from django.conf import settings

if not settings.configured:
    settings.configure(
        DEBUG=False, SECRET_KEY="test", ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__,
        MIDDLEWARE=["django.middleware.gzip.GZipMiddleware",
                    "django.middleware.common.CommonMiddleware"],
        INSTALLED_APPS=[], DATABASES={}, USE_TZ=True)
    django.setup()

from django.http import HttpResponse  # noqa: E402
from django.urls import path  # noqa: E402

from gosse import Broker, Event  # noqa: E402
from gosse.contrib.django import sse_response  # noqa: E402

broker = Broker(heartbeat_interval=0.2,
                on_connect=lambda environ: None if "HTTP_X_TOKEN" in environ
                else (403, "token required"))


def events(request):
    return sse_response(broker, request, client_id=request.GET.get("client", "anon"))


def broadcast(request):
    return HttpResponse(str(broker.broadcast(Event(request.GET["data"]))))


urlpatterns = [path("events", events), path("broadcast", broadcast)]

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
