ARG BASE
FROM ${BASE}
COPY persister /usr/local/bin/persister
RUN useradd --system --no-create-home switchboard
USER switchboard
ENTRYPOINT ["/usr/local/bin/persister"]
