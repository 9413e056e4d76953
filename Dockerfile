# callsgw gateway image (untested here: Docker's engine does not run on the
# project's machines). Used by docker-compose.yml: `docker compose build`.
FROM python:3.11-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY callsgw ./callsgw
COPY native ./native
RUN pip install --no-cache-dir . && useradd --system --home /data callsgw
ENV CALLSGW_DATA_DIR=/data
USER callsgw
EXPOSE 8443/tcp 8443/udp
CMD ["callsgw", "serve"]
