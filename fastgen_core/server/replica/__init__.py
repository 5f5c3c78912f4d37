"""One replica process (``python -m fastgen_core.server.replica.main``, started by the front door): the same
HTTP API on a Unix socket, served by an engine in this process.

main.py (the process: load the engine, serve), local.py (LocalBackend: admission, hand-over to the engine
loop, per-request handles), deadline.py (X-Request-Timeout and --request-timeout), engine_loop.py (the thread
that owns the engine and steps it), openai_api.py and native_api.py (the endpoints' answers), options.py
(request bodies to prompts and SamplingParams), metrics.py (this replica's Prometheus metrics).
"""
