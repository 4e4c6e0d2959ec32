"""Stream a chat completion from an OpenAI-compatible endpoint with gosse.stream.

    OPENAI_API_KEY=sk-... python examples/llm_stream.py "Write a haiku about queues"
    OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_MODEL=my-model \\
        python examples/llm_stream.py "Hello"

One POST with a JSON body, ``data: {...}`` chunks printed as they arrive, then
``data: [DONE]`` and the end of the response: no thread, no reconnect, so the
paid request is never sent twice.  An error answer (401, 400 "maximum context
length", 429...) is reported with the server's own message.  Exit status: 0,
or 1 on an error.
"""
import os
import sys

import gosse


def complete(prompt: str, *, base_url: str, api_key: str = "", model: str = "gpt-4o-mini",
             out=sys.stdout) -> str:
    """Stream the completion of ``prompt`` to ``out``; return the whole text."""
    url = base_url.rstrip("/") + "/chat/completions"
    body = {"model": model, "stream": True,
            "messages": [{"role": "user", "content": prompt}]}
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    parts = []
    with gosse.stream(url, method="POST", json=body, headers=headers,
                      read_timeout=120) as events:
        request_id = events.response.headers.get("x-request-id")
        for event in events:
            if event.data == "[DONE]":
                break
            chunk = event.json()
            if "error" in chunk:         # some servers report failures mid-stream
                raise RuntimeError(chunk["error"].get("message", chunk["error"]))
            for choice in chunk.get("choices", []):
                text = (choice.get("delta") or {}).get("content") or ""
                parts.append(text)
                out.write(text)
                out.flush()
    out.write("\n")
    if request_id:
        print(f"(request id {request_id})", file=sys.stderr)
    return "".join(parts)


def error_message(exc: gosse.ResponseError) -> str:
    """The server's own explanation of a refused request."""
    try:
        return exc.response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return exc.body.strip() or f"HTTP {exc.status_code}"


def main(argv) -> int:
    prompt = " ".join(argv) or "Say hello"
    try:
        complete(prompt, base_url=os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1"),
                 api_key=os.environ.get("OPENAI_API_KEY", ""),
                 model=os.environ.get("OPENAI_MODEL", "gpt-4o-mini"))
    except gosse.ResponseError as exc:
        print(f"error {exc.status_code}: {error_message(exc)}", file=sys.stderr)
        return 1
    except (gosse.SSEError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
