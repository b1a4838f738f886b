# Attention Service: multi-stage build on Debian 12.
#   docker build -t attention-service .
#   docker run --rm -p 50051:50051 -p 9090:9090 attention-service   # the demo model; metrics on 9090
#   docker run --rm -p 50051:50051 -v $PWD/models:/models attention-service \
#       --listen 0.0.0.0:50051 --model mine=/models/mine.safetensors
# Every build step calls the project's own scripts, the ones CI runs.
# Without a Docker engine, scripts/image.sh builds and smoke-tests it with buildah and podman.

FROM debian:12 AS build
WORKDIR /src
COPY scripts/install-deps.sh scripts/install-deps.sh
RUN scripts/install-deps.sh && rm -rf /var/lib/apt/lists/*
COPY . .
# Builds everything and runs every test (unit and end-to-end on 127.0.0.1);
# the sanitizer and fuzz stages test the sources, not the image: CI runs them.
RUN BUILD_DIR=/src/build scripts/test.sh --quick

FROM debian:12-slim AS runtime
COPY scripts/install-deps.sh /tmp/install-deps.sh
RUN /tmp/install-deps.sh --runtime && rm -rf /var/lib/apt/lists/* /tmp/install-deps.sh \
    && useradd --uid 10001 --user-group --no-create-home --no-log-init \
         --shell /usr/sbin/nologin attention
COPY --from=build /src/build/server/attention-server /src/build/client/attention-client /usr/local/bin/
COPY scripts/container-healthcheck.sh /usr/local/bin/attention-healthcheck
COPY --from=build /src/models /opt/attention/models
USER 10001
EXPOSE 50051 9090
STOPSIGNAL SIGTERM
# Follows the server's own --listen / --admin-listen (see the script).
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
  CMD ["attention-healthcheck"]
ENTRYPOINT ["attention-server"]
CMD ["--listen", "0.0.0.0:50051", "--admin-listen", "0.0.0.0:9090", \
     "--model", "demo=/opt/attention/models/demo.safetensors"]
