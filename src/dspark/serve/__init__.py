"""`dspark serve`: an OpenAI-compatible HTTP server on the engine (needs the `[serve]` extra).

    protocol.py     pydantic request/response models (OpenAI schema, vLLM's extra fields)
    inputs.py       request -> prompt ids + SamplingOptions, every limit checked up front (400)
    engine_loop.py  the one thread that owns and steps the LLM; per-request asyncio queues
    detokenizer.py  incremental text with stop strings; streamed text == non-streamed text
    responses.py    engine events -> chat.completion / text_completion bodies and SSE chunks
    app.py          FastAPI routes, disconnect -> abort;  auth.py, errors.py, metrics.py
    server.py       uvicorn with a SIGTERM drain;  bench.py: `dspark bench serve` (client side)
"""
