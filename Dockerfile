# The operator image: a slim Python base, the operator and mlflow-skinny in a virtualenv,
# a non-root user, no compilers or package installers in the final stage.
#   docker build -t ghcr.io/mlflow-operator/mlflow-operator:0.1.0 .
# (Not built in this project's CI: its machines have no Docker engine. The same install
# script is exercised by tests/e2e/test_packaging.py.)
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY operator ./operator
COPY scripts/install-operator.sh ./scripts/
RUN sh scripts/install-operator.sh /opt/venv /src

FROM python:3.11-slim
RUN python -m pip uninstall --yes pip setuptools wheel 2>/dev/null || true \
 && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin operator
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    MLFLOW_DISABLE_TELEMETRY=true
USER 10001:10001
EXPOSE 8080 8081
ENTRYPOINT ["mlflow-operator"]
CMD ["run", "--all-namespaces"]
