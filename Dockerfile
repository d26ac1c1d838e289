# meter-gateway container image: small, non-root, configuration mounted read-only.
#   docker build -t meter-gateway .
#   docker run -d --name meter-gateway \
#     -v /etc/meter-gateway/gateway.yaml:/etc/meter-gateway/gateway.yaml:ro \
#     -v meter-gateway-data:/var/lib/meter-gateway \
#     --device /dev/ttyUSB0 --group-add dialout \
#     -p 502:5020 -p 47808:47808/udp -p 9105:9105 meter-gateway
# BACnet/IP broadcasts (Who-Is) need the host network: add --network host for a BMS on the same subnet.
# The image's configuration (docker/gateway.yaml) binds every server to 0.0.0.0 explicitly: the code's default is
# loopback, which a published port cannot reach. Modbus TCP listens on 5020 inside (non-root), published as 502.
# A configuration of your own must do the same, and keep state files under /var/lib/meter-gateway.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m venv /opt/meter-gateway \
 && /opt/meter-gateway/bin/pip install --no-cache-dir ".[models]" \
 && find /opt/meter-gateway -name '__pycache__' -prune -exec rm -rf {} +

FROM python:3.11-slim
RUN groupadd --system meter-gateway \
 && useradd --system --gid meter-gateway --groups dialout --home-dir /var/lib/meter-gateway meter-gateway \
 && mkdir -p /etc/meter-gateway /var/lib/meter-gateway \
 && chown meter-gateway:meter-gateway /var/lib/meter-gateway
COPY --from=build /opt/meter-gateway /opt/meter-gateway
COPY docker/gateway.yaml /etc/meter-gateway/gateway.yaml
ENV PATH=/opt/meter-gateway/bin:$PATH PYTHONUNBUFFERED=1
USER meter-gateway
WORKDIR /var/lib/meter-gateway
# state files (journal, audit log) live here whatever folder the configuration is mounted in (gateway.state_dir)
ENV STATE_DIRECTORY=/var/lib/meter-gateway
VOLUME ["/var/lib/meter-gateway"]
# Modbus TCP slave (5020, published as 502), BACnet/IP, Prometheus /metrics and /health: the ports of
# docker/gateway.yaml, each bound to 0.0.0.0 there
EXPOSE 5020/tcp 47808/udp 9105/tcp
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9105/health', timeout=4).status == 200 else 1)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["meter-gateway"]
CMD ["run", "-c", "/etc/meter-gateway/gateway.yaml"]
