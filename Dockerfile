# Segment Anything ML backend for Label Studio (CPU image; for a GPU use a CUDA torch and DEVICE=cuda).
# A pinned base (exact Python and Debian release); bump it deliberately, with the test suite.
FROM python:3.11.7-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=9090 \
    WORKERS=1 \
    THREADS=8 \
    MODEL_DIR=/data/models \
    IMAGE_CACHE_DIR=/data/images \
    HOST=0.0.0.0

RUN apt-get update \
    && apt-get install -y --no-install-recommends libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY constraints.txt requirements.txt requirements-no-deps.txt ./
# The CPU build of torch; the constraint keeps every other package from pulling a CUDA torch.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --extra-index-url "${TORCH_INDEX}" -c constraints.txt -r requirements.txt \
    && pip install --no-deps -c constraints.txt -r requirements-no-deps.txt

COPY backend ./backend
COPY model.py _wsgi.py gunicorn.conf.py label_config.xml ./
COPY label_configs ./label_configs

# Run as an unprivileged user that owns only /data (models, caches, outputs).
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin backend \
    && mkdir -p /data && chown backend /data
USER backend

VOLUME /data
EXPOSE 9090
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,os; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ['PORT'])"
# Binding 0.0.0.0 needs BASIC_AUTH_USER / BASIC_AUTH_PASS (or ALLOW_UNAUTHENTICATED=true): the server says so.
CMD exec gunicorn --bind "${HOST}:${PORT}" --workers "${WORKERS}" --threads "${THREADS}" --timeout 0 --access-logfile - _wsgi:app
