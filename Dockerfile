# syntax=docker/dockerfile:1
# The runplane image: one static binary (musl), run as a non-root user on a
# distroless base. The chart runs it as `runplane controller` and
# `runplane api`.
#
#   docker build -t runplane:dev .

ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-alpine AS build
# A C compiler and musl's headers for ring (TLS); the target is musl, so the
# binary is statically linked.
RUN apk add --no-cache musl-dev gcc
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin runplane \
    && cp target/release/runplane /runplane

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /runplane /runplane
# distroless' "nonroot" user; the chart's securityContext runs it as this too.
USER 65532:65532
EXPOSE 8080 8000
ENTRYPOINT ["/runplane"]
CMD ["--help"]
