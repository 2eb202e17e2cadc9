# The prediction service. One image serves every model version: the version is chosen at run time
# (SWITCHYARD_MODEL) and models/ is mounted read-only.
#
#   docker build -t switchyard-service .                                   # with a registry
#   docker build --build-arg BASE_IMAGE=switchyard-base-python:bookworm .  # offline (scripts/build-images)
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Dependencies in their own layer, so a code change does not reinstall them. Wheels put in
# docker/wheels/ by scripts/build-images are used offline; otherwise pip fetches from PyPI.
COPY docker/requirements.txt /tmp/requirements.txt
COPY docker/wheels/ /tmp/wheels/
RUN python3 -m venv /opt/venv \
 && if ls /tmp/wheels/*.whl >/dev/null 2>&1; then \
        pip install --no-cache-dir --no-index --find-links /tmp/wheels -r /tmp/requirements.txt; \
    else \
        pip install --no-cache-dir -r /tmp/requirements.txt; \
    fi \
 && rm -rf /tmp/wheels /tmp/requirements.txt \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin switchyard

WORKDIR /app
COPY artifact/ /app/artifact/
COPY service/ /app/service/
USER 10001
ENV SWITCHYARD_HOST=0.0.0.0 \
    SWITCHYARD_PORT=8001
EXPOSE 8001
HEALTHCHECK --interval=2s --timeout=2s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('SWITCHYARD_PORT', '8001'), timeout=2)"]
ENTRYPOINT ["python3", "-m", "service"]
