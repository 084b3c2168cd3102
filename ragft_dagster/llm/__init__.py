"""One OpenAI-compatible client for the whole project: requests with retries and backoff
(the server's Retry-After honoured), the reply cache, the request/token budget, secret
redaction, and :func:`~ragft_dagster.llm.runner.run_requests`, the one runner that synthetic
Q&A and API scoring both use (the same retry, budget and error policy)."""
