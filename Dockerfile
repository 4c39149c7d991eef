# One image for `herald operator` (the chart's Deployment) and `herald job` (the CronJob
# pods the operator makes). Build: docker build -t herald:dev .
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY constraints.txt scripts/install-image.sh ./
RUN PYTHON=python sh install-image.sh deps /opt/herald
COPY pyproject.toml README.md ./
COPY dev dev
COPY operator operator
COPY jobs jobs
RUN PYTHON=python sh install-image.sh app /opt/herald

# The final image: the slim Python and the virtual environment, nothing to build with.
# Time-zone data comes with the pinned tzdata package.
FROM ${PYTHON_IMAGE}
COPY --from=build /opt/herald /opt/herald
ENV PATH=/opt/herald/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
ENTRYPOINT ["herald"]
CMD ["operator", "--listen=0.0.0.0"]
