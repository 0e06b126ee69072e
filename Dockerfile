# The one image every ClusterLink process runs from: `clusterlink deploy peer` points the
# control-plane and data-plane Deployments at it (<registry>/clusterlink:<tag>).
#
#   docker build -t ghcr.io/clusterlink-rs/clusterlink:0.1.0 .
#
# Without default features: the image carries no demo and so none of its test scaffolding.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Two builds: in one, features would unify and cl-dataplane would link what only the CLI needs.
RUN cargo build --release --locked --no-default-features -p clusterlink --bins \
    && cargo build --release --locked -p clusterlink-dataplane --bins \
    && mkdir /out \
    && cp target/release/clusterlink target/release/gwctl target/release/cl-gateway \
          target/release/cl-controlplane target/release/cl-dataplane /out/

# glibc and CA roots only; no shell. The deployments run it as user 65532 (nonroot).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/cl-gateway"]
