# Prometheus for the compose lab: Debian's package, so that the image builds from any Debian
# bookworm base without a registry of its own (scripts/docker-images passes
# BASE=qdl-base:bookworm; compose's default is debian:bookworm-slim). The configuration is
# mounted at /etc/prometheus/prometheus.yml (grafana/prometheus.yml).
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends prometheus \
 && rm -rf /var/lib/apt/lists/* \
 && install -d -o prometheus -g prometheus /prometheus
USER prometheus
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus", "--storage.tsdb.retention.time=2d"]
