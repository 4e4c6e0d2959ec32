"""Fan-out contender: sse-starlette under uvicorn (uvloop + httptools).
One ``asyncio.Queue`` per stream; POST /broadcast puts the event's data to
every queue (``put_nowait``, unbounded); each stream's async generator
yields ``{"data": ...}`` per event, the documented usage, which
sse-starlette encodes per stream and sends as one chunk per event."""
import asyncio
import time

from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

PAD = "x" * 70
queues = set()


async def sse(request):
    q = asyncio.Queue()
    queues.add(q)                       # registered before the response starts

    async def events():
        try:
            yield {"comment": "ok"}
            while True:
                yield {"data": await q.get()}
        finally:
            queues.discard(q)
    return EventSourceResponse(events(), ping=60)


async def broadcast(request):
    data = f"{request.query_params['seq']} {time.monotonic():.6f} {PAD}"
    for q in list(queues):
        q.put_nowait(data)
    return PlainTextResponse("ok")


app = Starlette(routes=[Route("/sse", sse), Route("/broadcast", broadcast, methods=["POST"])])
