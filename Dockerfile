# The operator image: a slim Python base, the operator and its runtime dependencies in a virtualenv,
# a non-root user, no compilers or package installers in the final stage. MALLOC_ARENA_MAX:
# glibc's malloc arenas, one per thread by default, keep what a burst freed (README: Benchmarks).
#   docker build -t ghcr.io/mlflow-operator/mlflow-operator:0.1.0 .
# The sandbox builds it with buildah on a local Debian base (sandbox/node/build-images.sh):
#   --build-arg BASE_IMAGE=localhost/sandbox/debian-python:12
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY operator ./operator
COPY scripts/install-operator.sh ./scripts/
# Set only by builds behind a TLS-intercepting proxy (the sandbox passes its CA bundle).
ARG PIP_CERT
RUN sh scripts/install-operator.sh /opt/venv /src

FROM ${BASE_IMAGE}
RUN python -m pip uninstall --yes pip setuptools wheel 2>/dev/null || true \
 && groupadd --gid 10001 mlflow-operator \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin mlflow-operator
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    MLFLOW_DISABLE_TELEMETRY=true \
    MALLOC_ARENA_MAX=2
USER 10001:10001
EXPOSE 8080 8081
ENTRYPOINT ["mlflow-operator"]
CMD ["run", "--all-namespaces"]
