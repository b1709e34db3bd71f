ARG BASE
FROM ${BASE}
COPY messaging-server /usr/local/bin/messaging-server
RUN useradd --system --no-create-home switchboard
USER switchboard
ENTRYPOINT ["/usr/local/bin/messaging-server"]
