# syntax=docker/dockerfile:1
# One image for the three services of the chat backend; docker-compose.yml runs it three times
# with a different command: `projector`, `chat-api` or `socket-edge`.
#
#   docker build -t pagenow-chat .
#   docker run --rm pagenow-chat chat-api      (configuration from the environment, see README;
#                                               listening on 0.0.0.0, chat-api and socket-edge
#                                               need CHAT_JWKS_URL or a 32+ byte CHAT_JWT_SECRET)

# ---- build ----------------------------------------------------------------------------------
FROM rust:1-bookworm AS build
# rdkafka builds its bundled librdkafka: a C toolchain (in the image), cmake, zlib, pkg-config.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake pkg-config zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# No database at build time: sqlx must not try to reach one.
ENV SQLX_OFFLINE=true
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
 && mkdir -p /out \
 && cp target/release/projector target/release/chat-api target/release/socket-edge /out/

# ---- run ------------------------------------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates: HTTPS to a JWKS endpoint; curl: the compose healthchecks (GET /readyz).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home chat
COPY --from=build /out/ /usr/local/bin/
USER chat
# Inside a container the services must listen on every interface.
ENV CHAT_HTTP_ADDR=0.0.0.0:8080 \
    CHAT_WS_ADDR=0.0.0.0:8081 \
    PROJECTOR_HTTP_ADDR=0.0.0.0:8082
EXPOSE 8080 8081 8082
CMD ["chat-api"]
