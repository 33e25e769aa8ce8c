# syntax=docker/dockerfile:1
# Container images for outbox-relay and the example saga services, from one build stage.
#
#   docker build -t outbox-relay .                             # the relay (default target)
#   docker build --target services -t outbox-saga-services .   # order/product/delivery-service
#
# Runtime images: debian:bookworm-slim (librdkafka is linked statically; only libssl3 and
# zlib are needed at run time), no shell tools added, running as an unprivileged user.
# HEALTHCHECK probes /healthz with bash's /dev/tcp, which bookworm-slim already ships,
# instead of installing curl (about 10 MB with its libraries, and more to patch) for one
# GET; it reads only the status line.

FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake libssl-dev zlib1g-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Cache mounts keep the registry and compiled dependencies between builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
        -p outbox-relay -p order-service -p product-service -p delivery-service \
    && mkdir -p /out \
    && cp target/release/outbox-relay target/release/order-service \
          target/release/product-service target/release/delivery-service /out/

FROM debian:bookworm-slim AS runtime
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home app
USER 10001

# The three example services; compose picks one with `command`. They listen on
# LISTEN_ADDR (default 0.0.0.0:8080) and read the rest from the environment.
FROM runtime AS services
COPY --from=build /out/order-service /out/product-service /out/delivery-service /usr/local/bin/
ENV HEALTH_PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/$HEALTH_PORT && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
CMD ["order-service"]

# The relay (default target). Mount a config at /etc/outbox-relay/relay.toml; its
# `[admin] listen` port must match HEALTH_PORT (default 9488, the relay's default).
FROM runtime AS relay
COPY --from=build /out/outbox-relay /usr/local/bin/outbox-relay
ENV HEALTH_PORT=9488
EXPOSE 9488
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/$HEALTH_PORT && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["outbox-relay"]
CMD ["run", "--config", "/etc/outbox-relay/relay.toml"]
