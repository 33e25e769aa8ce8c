# Multi-stage build: compile in the Rust image, run in a slim Debian image as non-root.
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake libssl-dev zlib1g-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin outbox-relay

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home relay
COPY --from=build /src/target/release/outbox-relay /usr/local/bin/outbox-relay
USER 10001
ENTRYPOINT ["outbox-relay"]
CMD ["check", "--config", "/etc/outbox-relay/relay.toml"]
