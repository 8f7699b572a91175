# One image for the API and the worker (docker-compose.yml picks the command).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    HISTOSYNTH_HOME=/data
WORKDIR /srv/histosynth

COPY pyproject.toml README.md ./
COPY app ./app
COPY worker ./worker
COPY models ./models
COPY migrations ./migrations
RUN pip install .

RUN useradd --create-home --uid 1000 histosynth && mkdir -p /data && chown histosynth /data
USER histosynth
VOLUME ["/data"]
EXPOSE 8000
CMD ["histosynth", "serve", "--host", "0.0.0.0", "--port", "8000", "--no-worker"]
