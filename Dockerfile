# lrobridge on Cloud Run (or any container host that sets $PORT).
#
#   docker build -t REGION-docker.pkg.dev/PROJECT/REPO/lrobridge:TAG .
#
# tests/unit/test_container.py checks this file against the code and terraform/: base image,
# non-root user, the port, and the `lrobridge serve` command line; tests/integration/test_container_command.py
# runs that command line for real (health check, SIGTERM drain, JSON logs, in-process watcher).

FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY lrobridge ./lrobridge
# constraints.txt pins every dependency (scripts/update_constraints.sh), so an image rebuilt
# later has the same versions as the one tested.
RUN pip wheel --no-cache-dir --wheel-dir /wheels -c constraints.txt . \
    && cp constraints.txt /wheels/

FROM python:3.12-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PORT=8080 \
    LROBRIDGE_LOG_FORMAT=json
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels -c /wheels/constraints.txt lrobridge \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --create-home --home-dir /app lrobridge
WORKDIR /app
USER 10001:10001
EXPOSE 8080
# `lrobridge serve`: waitress, which reads each request whole before one of the 8 threads runs it
# (slow clients hold a socket, never a thread), on $PORT, with the watcher in poller mode, the
# webhook worker and JSON logs. Cloud Run scales instances; set the service's concurrency to the
# threads. Cloud Run enforces request timeouts itself. --graceful-timeout 8: SIGTERM lets
# requests in flight finish inside Cloud Run's 10 s grace. `exec` makes it PID 1, so it receives
# SIGTERM itself.
CMD exec lrobridge serve --host 0.0.0.0 --threads 8 --graceful-timeout 8s --watcher --app lrobridge.wsgi:app
