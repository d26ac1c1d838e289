# meter-gateway container image: small, non-root, configuration mounted read-only.
#   docker build -t meter-gateway .
#   docker run -d --name meter-gateway \
#     -v /etc/meter-gateway/gateway.yaml:/etc/meter-gateway/gateway.yaml:ro \
#     -v meter-gateway-data:/var/lib/meter-gateway \
#     --device /dev/ttyUSB0 --group-add dialout \
#     -p 502:502 -p 47808:47808/udp -p 9105:9105 meter-gateway
# BACnet/IP broadcasts (Who-Is) need the host network: add --network host for a BMS on the same subnet.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m venv /opt/meter-gateway \
 && /opt/meter-gateway/bin/pip install --no-cache-dir . \
 && find /opt/meter-gateway -name '__pycache__' -prune -exec rm -rf {} +

FROM python:3.11-slim
RUN groupadd --system meter-gateway \
 && useradd --system --gid meter-gateway --groups dialout --home-dir /var/lib/meter-gateway meter-gateway \
 && mkdir -p /etc/meter-gateway /var/lib/meter-gateway \
 && chown meter-gateway:meter-gateway /var/lib/meter-gateway
COPY --from=build /opt/meter-gateway /opt/meter-gateway
COPY gateway.yaml /etc/meter-gateway/gateway.yaml
ENV PATH=/opt/meter-gateway/bin:$PATH PYTHONUNBUFFERED=1
USER meter-gateway
WORKDIR /var/lib/meter-gateway
# state files (journal, audit log) live here whatever folder the configuration is mounted in (gateway.state_dir)
ENV STATE_DIRECTORY=/var/lib/meter-gateway
VOLUME ["/var/lib/meter-gateway"]
# Modbus TCP slave, BACnet/IP, Prometheus /metrics and /health
EXPOSE 502/tcp 47808/udp 9105/tcp
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9105/health', timeout=4).status == 200 else 1)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["meter-gateway"]
CMD ["run", "-c", "/etc/meter-gateway/gateway.yaml"]
