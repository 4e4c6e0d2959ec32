"""Framework integrations: :mod:`gosse.contrib.flask`, :mod:`gosse.contrib.django`."""
