FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY backend ./backend
RUN pip install --no-cache-dir . && useradd --system --uid 10001 copilot
USER copilot

ENV COPILOT_HOST=0.0.0.0 \
    COPILOT_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=5 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health/ready').status != 200)"
CMD ["copilot", "serve"]
