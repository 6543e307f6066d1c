"""Load on the served model: N completion requests at concurrency C, errors, requests/s, p50/p99 latency.

Serves the built-in model with ``psi-ray``'s Ray Serve app (ray.serve.llm's vLLM app; or hits ``--endpoint``),
warms it with one full wave of ``--concurrency`` requests (not counted), sends ``--requests`` short completion
requests with ``--concurrency`` in flight, and counts every non-200 answer, and every answer without a finish
reason, as an error. With ``--stream`` every request streams (SSE) and the time to first token (p50/p99) is
measured too: the time until the first chunk with text arrives.
Run: ``make bench`` or ``python bench/serve_load.py --requests 1000 --concurrency 32 --stream``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

TOPICS = ["apples", "trains", "a bakery", "a garden", "savings", "a school trip", "paint", "books"]


def body(i: int, model: str, max_tokens: int) -> dict:
    return {"model": model, "prompt": f"Question: Tom has {i % 50 + 3} {TOPICS[i % len(TOPICS)]}. He buys",
            "max_tokens": max_tokens, "temperature": 0.7, "seed": i}


async def streamed(client, url: str, payload: dict, t0: float) -> tuple[bool, float | None, str]:
    """One streamed completion: (finished well, seconds to the first chunk with text, what went wrong)."""
    first, done, finish = None, False, None
    async with client.stream("POST", f"{url}/completions", json={**payload, "stream": True}) as r:
        if r.status_code != 200:
            return False, None, f"{r.status_code}: {(await r.aread())[:120]!r}"
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                continue
            choice = json.loads(line[6:])["choices"][0]
            if first is None and choice.get("text"):
                first = time.perf_counter() - t0
            finish = choice.get("finish_reason") or finish
    ok = done and finish in ("stop", "length")
    return ok, first, "" if ok else f"stream ended without [DONE] or a finish reason ({finish})"


async def load(url: str, model: str, n: int, concurrency: int, max_tokens: int, stream: bool = False,
               api_key: str | None = None) -> dict:
    import httpx

    sem = asyncio.Semaphore(concurrency)
    latencies, ttfts, errors = [], [], []
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=concurrency),
                                 headers=headers) as client:
        async def one(i):
            async with sem:
                t0 = time.perf_counter()
                try:
                    if stream:
                        ok, first, why = await streamed(client, url, body(i, model, max_tokens), t0)
                        if first is not None:
                            ttfts.append(first)
                    else:
                        r = await client.post(f"{url}/completions", json=body(i, model, max_tokens))
                        ok = r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")
                        why = f"{r.status_code}: {r.text[:120]}"
                    if not ok:
                        errors.append(why)
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100)
    out = {"requests": n, "concurrency": concurrency, "errors": len(errors), "first_errors": errors[:3],
           "wall_s": round(wall, 2), "requests_per_s": round(n / wall, 2), "p50_s": round(q[49], 3),
           "p99_s": round(q[98], 3)}
    if stream and len(ttfts) > 1:
        t = statistics.quantiles(ttfts, n=100)
        out.update(ttft_p50_s=round(t[49], 3), ttft_p99_s=round(t[98], 3))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="model to serve (ignored with --endpoint)")
    ap.add_argument("--endpoint", default=None, help="an already running http://HOST:PORT/v1")
    ap.add_argument("--stream", action="store_true", help="stream every request (SSE) and measure time to first "
                    "token")
    ap.add_argument("--api-key-env", default=None, help="env var holding the endpoint's key")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=16)
    args = ap.parse_args()

    import os

    from psi_ray import serve
    from psi_ray.evaluate.run import free_port, served_name

    api_key = os.environ.get(args.api_key_env) if args.api_key_env else None
    url = args.endpoint or serve.start(args.model, port=free_port(), name="bench", max_model_len=1024)
    name = served_name(url, api_key)
    asyncio.run(load(url, name, args.concurrency, args.concurrency, args.max_tokens, args.stream, api_key))  # warm-up
    main_run = asyncio.run(load(url, name, args.requests, args.concurrency, args.max_tokens, args.stream, api_key))
    print(json.dumps({"load": main_run}))
    if args.endpoint is None:
        serve.stop()
    print(f"\n{main_run['requests']} requests at concurrency {main_run['concurrency']}: {main_run['errors']} errors, "
          f"{main_run['requests_per_s']} requests/s, p50 {main_run['p50_s']} s, p99 {main_run['p99_s']} s")
    if "ttft_p50_s" in main_run:
        print(f"time to first token: p50 {main_run['ttft_p50_s']} s, p99 {main_run['ttft_p99_s']} s (streamed)")
    return 1 if main_run["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
